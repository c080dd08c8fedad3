package client

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestDialMetaNeverSendsToken: a peer at the controller's address that
// does not know the token (here it forges a challenge) learns nothing of
// it from DialMeta, which refuses it as unproven.
func TestDialMetaNeverSendsToken(t *testing.T) {
	const token = "tok-client-pkg-SECRET-7d1e0c55aa"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	var (
		mu  sync.Mutex
		got bytes.Buffer
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
							body, _ := proto.Marshal(&wirepb.Hello{Version: wire.Version, AuthNonce: bytes.Repeat([]byte{1}, 32), AuthProof: bytes.Repeat([]byte{2}, 32)})
							nc.Write(append(wire.Header{Version: wire.Version, Flags: wire.FlagReply, Op: h.Op, ID: h.ID, BodyLen: uint32(len(body))}.Append(nil), body...))
						}
					}
				}
				io.Copy(io.Discard, tee)
				mu.Lock()
				got.Write(rec.Bytes())
				mu.Unlock()
			}()
		}
	}()
	addr := "tcp://" + l.Addr().String()
	_, err = DialMeta(t.Context(), addr, RemoteConfig{Token: token, Name: "t"})
	require.ErrorIs(t, err, wire.ErrServerUnproven)
	assert.Contains(t, err.Error(), addr)
	l.Close()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	require.NotZero(t, got.Len())
	assert.NotContains(t, got.String(), token)
}
