package shm

import (
	"bytes"
	"context"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/tcp"
)

// The payload of a shared-memory put and get never crosses a socket: the
// unit's wire server sees only control messages. The same transfer over
// the tcp transport, on the same unix socket, shows the counter does count
// payload.
func TestPayloadNeverCrossesTheSocket(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	ctx := context.Background()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	traffic := func() int64 { in, out := tu.srv.Traffic(); return in + out }

	c := dialUnit(t, tu, DefaultConfig())
	before := traffic()
	addrs, err := c.Write(ctx, [][][]byte{{payload[:1<<20], payload[1<<20:]}})
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, len(payload))
	if err := c.Read(ctx, addrs, [][]byte{dst}); err != nil {
		t.Fatal(err)
	}
	l, err := c.View(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	same := bytes.Equal(l.Bytes(0), payload)
	l.Release()
	if !bytes.Equal(dst, payload) || !same {
		t.Fatal("data differs")
	}
	shmBytes := traffic() - before
	if shmBytes > 64<<10 {
		t.Fatalf("a 32 MiB put, read and view moved %d bytes over the unit's socket", shmBytes)
	}

	tr := tcp.New(tcp.Config{Conns: 1})
	defer tr.Close()
	tc, err := tr.Dial(ctx, engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	before = traffic()
	if _, err := tc.Write(ctx, [][][]byte{{payload}}); err != nil {
		t.Fatal(err)
	}
	if sockBytes := traffic() - before; sockBytes < int64(len(payload)) {
		t.Fatalf("the tcp transport moved %d bytes for a %d-byte put: the counter misses payload", sockBytes, len(payload))
	}
	t.Logf("32 MiB put+read+view over shm: %d socket bytes; the same put over the socket: %d", shmBytes, traffic()-before)
}
