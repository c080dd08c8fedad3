package client

import (
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestDialMetaNeverSendsToken: a peer at the controller's address that
// does not know the token (here it forges a challenge) learns nothing of
// it from DialMeta, which refuses it as unproven.
func TestDialMetaNeverSendsToken(t *testing.T) {
	const token = "tok-client-pkg-SECRET-7d1e0c55aa"
	addr, sent := recordingPeer(t, &wirepb.Hello{Version: wire.Version, AuthNonce: bytes.Repeat([]byte{1}, 32), AuthProof: bytes.Repeat([]byte{2}, 32)})
	_, err := DialMeta(t.Context(), addr, RemoteConfig{Token: token, Name: "t"})
	require.ErrorIs(t, err, wire.ErrServerUnproven)
	assert.Contains(t, err.Error(), addr)
	got := bytes.Join(sent(), nil)
	require.NotZero(t, len(got))
	assert.NotContains(t, string(got), token)
}

// plainController is a peer at the controller's address that answers
// every HELLO at once, without the challenge (as a controller run with
// --insecure does, and as any peer can), and records what each
// connection sent until the client closes it.
func plainController(t *testing.T) (addr string, sent func() [][]byte) {
	t.Helper()
	return recordingPeer(t, &wirepb.Hello{Version: wire.Version, Role: "controller"})
}

// recordingPeer is a peer that answers the first frame of each connection
// with reply and records what each connection sent until the client
// closes it; sent stops it and returns the records.
func recordingPeer(t *testing.T, reply *wirepb.Hello) (addr string, sent func() [][]byte) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	var (
		mu  sync.Mutex
		got [][]byte
		wg  sync.WaitGroup
	)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				var rec bytes.Buffer
				tee := io.TeeReader(nc, &rec)
				hb := make([]byte, wire.HeaderSize)
				if _, err := io.ReadFull(tee, hb); err == nil {
					if h, err := wire.DecodeHeader(hb); err == nil {
						if _, err := io.CopyN(io.Discard, tee, int64(h.BodyLen)); err == nil {
							body, _ := proto.Marshal(reply)
							nc.Write(append(wire.Header{Version: wire.Version, Flags: wire.FlagReply, Op: h.Op, ID: h.ID, BodyLen: uint32(len(body))}.Append(nil), body...))
						}
					}
				}
				io.Copy(io.Discard, tee)
				mu.Lock()
				got = append(got, rec.Bytes())
				mu.Unlock()
			}()
		}
	}()
	return "tcp://" + l.Addr().String(), func() [][]byte {
		l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

// onlyHello checks that each connection carried one frame, the HELLO.
func onlyHello(t *testing.T, got [][]byte) {
	t.Helper()
	require.NotEmpty(t, got)
	for _, b := range got {
		rd := bytes.NewReader(b)
		hb := make([]byte, wire.HeaderSize)
		_, err := io.ReadFull(rd, hb)
		require.NoError(t, err)
		h, err := wire.DecodeHeader(hb)
		require.NoError(t, err)
		assert.Equal(t, wire.OpHello, h.Op)
		_, err = io.CopyN(io.Discard, rd, int64(h.BodyLen))
		require.NoError(t, err)
		assert.Zero(t, rd.Len(), "the client sent more than its HELLO to a server that proved nothing")
	}
}

// TestRequireServerProofEnv: $TQ_REQUIRE_SERVER_PROOF=1, read where the
// token is found, makes DialMeta and Connect refuse a controller that
// answers without proving it knows the token, naming its address and the
// setting, and send it nothing after the HELLO; RemoteConfig.Conn's and
// ConnectConfig's field do the same; without a token it is a
// configuration error; a value that is not a boolean is refused.
func TestRequireServerProofEnv(t *testing.T) {
	const token = "tok-client-pkg-proof-4b1d9e"
	refused := func(t *testing.T, addr string, err error) {
		t.Helper()
		require.ErrorIs(t, err, wire.ErrServerUnproven)
		assert.Contains(t, err.Error(), addr)
		assert.Contains(t, err.Error(), "TQ_REQUIRE_SERVER_PROOF")
	}
	t.Run("env DialMeta", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "1")
		addr, sent := plainController(t)
		_, err := DialMeta(t.Context(), addr, RemoteConfig{Token: token, Name: "t"})
		refused(t, addr, err)
		onlyHello(t, sent())
	})
	t.Run("env Connect", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "1")
		addr, sent := plainController(t)
		_, err := Connect(t.Context(), addr, ConnectConfig{Token: token, Name: "t"})
		refused(t, addr, err)
		onlyHello(t, sent())
	})
	t.Run("RemoteConfig.Conn", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "")
		addr, sent := plainController(t)
		_, err := DialMeta(t.Context(), addr, RemoteConfig{Token: token, Name: "t", Conn: wire.ConnConfig{RequireServerProof: true}})
		refused(t, addr, err)
		onlyHello(t, sent())
	})
	t.Run("ConnectConfig", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "0")
		addr, sent := plainController(t)
		_, err := Connect(t.Context(), addr, ConnectConfig{Token: token, Name: "t", RequireServerProof: true})
		refused(t, addr, err)
		onlyHello(t, sent())
	})
	t.Run("no token", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "1")
		t.Setenv("TQ_TOKEN", "")
		require.NoError(t, os.Unsetenv("TQ_TOKEN")) // set but empty is refused
		t.Setenv("TQ_DATA_DIR", t.TempDir())
		addr, sent := plainController(t)
		_, err := DialMeta(t.Context(), addr, RemoteConfig{Name: "t"})
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "TQ_REQUIRE_SERVER_PROOF")
		assert.Contains(t, err.Error(), addr)
		assert.Empty(t, sent(), "the client dialed")
	})
	t.Run("bad value", func(t *testing.T) {
		t.Setenv("TQ_REQUIRE_SERVER_PROOF", "maybe")
		addr, sent := plainController(t)
		_, err := DialMeta(t.Context(), addr, RemoteConfig{Token: token, Name: "t"})
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "TQ_REQUIRE_SERVER_PROOF")
		assert.Empty(t, sent(), "the client dialed")
	})
}
