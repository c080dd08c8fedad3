package shm

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// A segment is fetched by its id from the fd socket's path, and a unit
// restarted at the same paths numbers its segments from 1 again. A
// Reserve (or View) whose RESERVE the old unit answered, and whose fetch
// runs only once the connection to it has ended (here: it waited for the
// mapping lock meanwhile), must not map the new unit's segment of the
// same id: the caller would write through its Buf into the new unit's
// committed bytes. It fails instead with an error wrapping
// wire.ErrUnavailable, and the new unit's bytes stay as they were.
func TestFetchAfterConnectionEndedRefused(t *testing.T) {
	old := startUnit(t, unitConfig(), storage.ServerConfig{})
	restarted := startUnit(t, unitConfig(), storage.ServerConfig{})
	// The restarted unit holds committed bytes at the start of its
	// segment 1, where the old unit places the client's reservation.
	const n = 64 << 10
	rr, err := restarted.u.Reserve(t.Context(), []int64{n})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xaa}, n)
	copy(rr.Buf(0), want)
	if err := rr.Commit(); err != nil {
		t.Fatal(err)
	}
	stored := rr.Addr(0)

	tr := New(Config{Control: ControlSocket})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: old.u.ID(), Addr: old.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	c.mapping <- struct{}{} // another fetch holds the mapping lock
	type result struct {
		r   *Reservation
		err error
	}
	reserved := make(chan result, 1)
	go func() {
		r, err := c.Reserve(t.Context(), []int64{4096})
		reserved <- result{r, err}
	}()
	for deadline := time.Now().Add(5 * time.Second); old.u.Stats().OpenReservations == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the old unit never answered the RESERVE")
		}
	}
	old.srv.Close() // the old unit goes
	for deadline := time.Now().Add(5 * time.Second); !c.Gone(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the connection to the old unit never ended")
		}
	}
	// The unit restarted at the same paths: its fd socket answers there.
	restartedConn, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: restarted.u.ID(), Addr: restarted.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer restartedConn.Close()
	c.fdSock = restartedConn.fdSock
	<-c.mapping

	res := <-reserved
	if res.err == nil {
		seg := res.r.Addr(0).Segment
		copy(res.r.Buf(0), bytes.Repeat([]byte{0x55}, 4096)) // the caller fills its reservation
		res.r.Abort(t.Context())
		l, err := restarted.u.Acquire([]engine.RemoteAddr{stored})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release()
		t.Fatalf("Reserve whose segment was fetched after the connection ended mapped segment %d of the unit now at the fd socket (restarted unit's bytes intact: %v); want an error wrapping %v",
			seg, bytes.Equal(l.Bytes(0), want), wire.ErrUnavailable)
	}
	if !errors.Is(res.err, wire.ErrUnavailable) {
		t.Errorf("Reserve whose segment fetch came after the connection ended: got %v, want an error wrapping %v", res.err, wire.ErrUnavailable)
	}
}
