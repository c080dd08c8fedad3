package shm

import (
	"errors"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// A segment fetch from an fd socket that takes the request and never
// answers (a wedged unit: its backlog accepts the connect) ends when the
// connection to the unit ends, as every other call does: a Read with no
// deadline fails with an error wrapping wire.ErrUnavailable instead of
// waiting for Close. It used to wait for ever, watching only its context
// and Close.
func TestSegmentFetchEndsWithConnection(t *testing.T) {
	tu, addr := unitWithExtent(t)

	tr := New(Config{Control: ControlSocket})
	defer tr.Close()
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read, nc := readStalledInFetch(t, c, addr)
	defer nc.Close()

	tu.srv.Close() // the unit hangs up
	select {
	case err := <-read:
		if !errors.Is(err, wire.ErrUnavailable) {
			t.Errorf("Read whose connection ended during its segment fetch: got %v, want an error wrapping %v", err, wire.ErrUnavailable)
		}
	case <-time.After(3 * time.Second):
		gone := c.Gone()
		nc.Close() // let the fetch fail so that the test can end
		t.Fatalf("Read still blocked in its segment fetch 3 s after the unit hung up (connection gone: %v); it returned %v once the fd socket closed", gone, <-read)
	}
}
