package main

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// clearHello sends a HELLO with the token in clear (a client older than
// the challenge handshake) to addr and returns the error code of its
// answer (CODE_UNSPECIFIED: admitted).
func clearHello(t *testing.T, addr, token string) wirepb.Code {
	t.Helper()
	network, address, err := wire.ParseAddr(addr)
	require.NoError(t, err)
	nc, err := net.Dial(network, address)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	body, err := proto.Marshal(&wirepb.Hello{Version: wire.Version, Role: "client", Token: token})
	require.NoError(t, err)
	_, err = nc.Write(append(wire.Header{Version: wire.Version, Op: wire.OpHello, ID: 1, BodyLen: uint32(len(body))}.Append(nil), body...))
	require.NoError(t, err)
	hb := make([]byte, wire.HeaderSize)
	_, err = io.ReadFull(nc, hb)
	require.NoError(t, err)
	h, err := wire.DecodeHeader(hb)
	require.NoError(t, err)
	rb := make([]byte, h.BodyLen)
	_, err = io.ReadFull(nc, rb)
	require.NoError(t, err)
	if h.Flags&wire.FlagError == 0 {
		return wirepb.Code_CODE_UNSPECIFIED
	}
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(rb, &e))
	return e.Code
}

// TestServeRefuseClearToken: tq serve admits a clear-token HELLO by
// default and refuses it with --refuse-clear-token, on the controller and
// on its units; clients of this version (the challenge) connect either way.
func TestServeRefuseClearToken(t *testing.T) {
	bin := tqBinary(t)
	const token = "refuse-clear-token-test-0123456789abcdef"
	for _, refuse := range []bool{false, true} {
		args := []string{"--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--token", token, "--capacity", "64MiB", "--huge-pages=false"}
		if refuse {
			args = append(args, "--refuse-clear-token")
		}
		p := startServe(t, nil, bin, args...)
		want := wirepb.Code_CODE_UNSPECIFIED
		if refuse {
			want = wirepb.Code_CODE_UNAUTHENTICATED
		}
		assert.Equal(t, want, clearHello(t, p.addrs[0], token), "controller, refuse=%v", refuse)
		require.NotEmpty(t, p.units)
		assert.Equal(t, want, clearHello(t, p.units[0][0], token), "unit, refuse=%v", refuse)

		m, err := client.DialMeta(t.Context(), p.addrs[0], client.RemoteConfig{Token: token, Name: "t"})
		require.NoError(t, err, "refuse=%v", refuse)
		m.Close()
	}
}
