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

// TestSmallOpsInline: over a control ring, writes and reads of at most
// InlineMax bytes in all travel in the ring's frames (one round trip, no
// reservation or lease); over the unit's socket, and past InlineMax, the
// frames carry no payload and the bytes go through shared memory. The
// unit server counts every frame byte, rings' included.
func TestSmallOpsInline(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{})
	ctx := context.Background()
	traffic := func() int64 { in, out := tu.srv.Traffic(); return in + out }
	payload := bytes.Repeat([]byte("tq"), InlineMax/2) // with 10 bytes more: past InlineMax
	for _, control := range []Control{ControlRing, ControlSocket} {
		c := dialUnit(t, tu, Config{Control: control})
		ring := control == ControlRing
		if c.Inline(InlineMax) != ring || c.Inline(InlineMax+1) {
			t.Errorf("%v: Inline(%d) = %v, Inline(%d) = %v", control, InlineMax, c.Inline(InlineMax), InlineMax+1, c.Inline(InlineMax+1))
		}
		for _, small := range []bool{true, false} {
			first := payload // two extents, InlineMax bytes in all, or 10 more
			if small {
				first = payload[:len(payload)-10]
			}
			total := int64(len(first) + 10)
			before := traffic()
			const rounds = 20
			for range rounds {
				addrs, err := c.Write(ctx, [][][]byte{{first[:100], first[100:]}, {payload[:10]}})
				if err != nil {
					t.Fatal(err)
				}
				dst := [][]byte{make([]byte, len(first)), make([]byte, 10)}
				if err := c.Read(ctx, addrs, dst); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dst[0], first) || !bytes.Equal(dst[1], payload[:10]) {
					t.Fatalf("%v: read back differs", control)
				}
				if err := c.Free(ctx, addrs); err != nil {
					t.Fatal(err)
				}
			}
			moved := traffic() - before
			if inline := ring && small; inline && moved < 2*rounds*total {
				t.Errorf("%v, %d bytes: %d rounds moved %d frame bytes; inline, each writes and reads the %d bytes", control, total, rounds, moved, total)
			} else if !inline && moved >= total {
				t.Errorf("%v, %d bytes: %d rounds moved %d frame bytes; the payload should not be in them", control, total, rounds, moved)
			}
		}
		if st := settle(t, tu.u); st.Used != 0 {
			t.Errorf("%v: %d bytes still used", control, st.Used)
		}
		c.Close()
	}
}
