package resp

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// TestSetRefusedForADrainWithNoRoomElsewhere starts a drain of the unit a
// SET reserved on, between its copy and its commit, while the other unit
// has no room (another writer's open reservations hold it): the
// controller refuses the commit and no unit can take the cells at once.
// The SET must then wait for room and put the value elsewhere, rather
// than answer an error or lose it; the draining unit gets back what the
// SET had reserved there.
func TestSetRefusedForADrainWithNoRoomElsewhere(t *testing.T) {
	ctx := context.Background()
	e := newEndpointWith(t, Config{Loops: 1}, func(c *embedded.Config) {
		c.Storage.Capacity, c.Storage.SegmentSize = 4<<20, 1<<20
	})
	require.Len(t, e.e.Units, 2)
	rc := e.client(t, nil)
	require.NoError(t, rc.Set(ctx, "before", "x", 0).Err()) // the connection is on the loop
	other := e.client(t, nil)
	require.NoError(t, other.Ping(ctx).Err()) // and this one too
	used := map[engine.UnitID]int64{}
	for _, u := range e.e.Units {
		used[u.ID()] = u.Stats().Used
	}

	var (
		once    sync.Once
		drained = make(chan *storage.Unit, 1) // the unit the SET had reserved on
		freeing = make(chan struct{})         // closed before the room is given back
		freed   = make(chan struct{})
	)
	hook := func(u *storage.Unit) {
		once.Do(func() {
			_, err := e.e.Controller.DrainUnit(u.ID(), true)
			assert.NoError(t, err)
			drained <- u
			held := fillOthers(e, u)
			for _, v := range e.e.Units {
				if v != u {
					st := v.Stats()
					assert.Equal(t, st.Capacity, st.Used, "unit %v has room left", v.ID())
				}
			}
			assert.NotEmpty(t, held)
			go func() {
				defer close(freed)
				// The SET waits for room off the loop: the loop still
				// answers the other connection.
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				assert.NoError(t, other.Ping(pctx).Err(), "the loop waited with the SET")
				time.Sleep(100 * time.Millisecond)
				close(freeing)
				for _, r := range held {
					r.Abort()
				}
			}()
		})
	}
	testHookCommit.Store(&hook)
	t.Cleanup(func() { testHookCommit.Store(nil) })

	val := "a value set while its unit began draining"
	require.NoError(t, rc.Set(ctx, "k", val, 0).Err())
	testHookCommit.Store(nil)
	var u *storage.Unit
	select {
	case u = <-drained:
	default:
		t.Fatal("the SET never reached its commit through the fast path")
	}
	select {
	case <-freeing:
	default:
		t.Error("the SET was answered before any unit had room for it")
	}
	<-freed

	assert.Equal(t, val, rc.Get(ctx, "k").Val())
	b, err := e.kv.BatchGetCopy(ctx, "default", []string{"k"}, "value")
	require.NoError(t, err)
	assert.Equal(t, val, string(b.Col("value").RowBytes(0)))
	cells, ok := e.e.Controller.KeyCells("default", "k", []string{"value"}, nil)
	require.True(t, ok)
	assert.NotEqual(t, u.ID(), cells[0].Loc.Unit, "the value was committed on the unit that was draining")
	assert.Equal(t, used[u.ID()], u.Stats().Used, "the draining unit kept the bytes the SET had reserved")
}

// TestHSetCountsInTheCommitWhenItsUnitStartsDraining starts a drain of
// the unit an HSET reserved on, between its copy and its commit, while
// the other unit has no room, and has a second client set the same new
// field meanwhile. Both wait for room; of the two, exactly one must hear
// that the field was new, as when no drain starts. Before, the first went
// the general way, which reads the count before it writes, and both
// heard 1.
func TestHSetCountsInTheCommitWhenItsUnitStartsDraining(t *testing.T) {
	ctx := context.Background()
	e := newEndpointWith(t, Config{}, func(c *embedded.Config) {
		c.Storage.Capacity, c.Storage.SegmentSize = 4<<20, 1<<20
	})
	require.Len(t, e.e.Units, 2)
	first, second := e.client(t, nil), e.client(t, nil)
	require.NoError(t, first.Ping(ctx).Err())
	require.NoError(t, second.Ping(ctx).Err())

	var (
		once          sync.Once
		drained       = make(chan *storage.Unit, 1)
		secondAnswer  = make(chan int64, 1)
		secondStarted = make(chan struct{})
	)
	hook := func(u *storage.Unit) {
		once.Do(func() {
			_, err := e.e.Controller.DrainUnit(u.ID(), true)
			assert.NoError(t, err)
			drained <- u
			held := fillOthers(e, u)
			assert.NotEmpty(t, held)
			go func() {
				close(secondStarted)
				n, err := second.HSet(ctx, "k", "f", "second").Result()
				assert.NoError(t, err)
				secondAnswer <- n
			}()
			go func() {
				// Both HSETs wait for room meanwhile; the first has
				// looked at the key, and the second not committed.
				<-secondStarted
				time.Sleep(100 * time.Millisecond)
				for _, r := range held {
					r.Abort()
				}
			}()
		})
	}
	testHookCommit.Store(&hook)
	t.Cleanup(func() { testHookCommit.Store(nil) })

	n, err := first.HSet(ctx, "k", "f", "first").Result()
	require.NoError(t, err)
	testHookCommit.Store(nil)
	select {
	case <-drained:
	default:
		t.Fatal("the HSET never reached its commit through the one-key path")
	}
	assert.Equal(t, int64(1), n+<-secondAnswer, "the sum of the two HSETs' answers (the first answered %d)", n)
	assert.Equal(t, int64(1), first.HLen(ctx, "k").Val())
}

// fillOthers takes every byte the endpoint's units other than u have
// left, down to their smallest extent, and returns the reservations.
func fillOthers(e *endpoint, u *storage.Unit) []*storage.Reservation {
	var held []*storage.Reservation
	for _, v := range e.e.Units {
		for size := int64(64 << 10); v != u && size > 0; size /= 2 {
			for {
				r, err := v.Reserve(noWait, []int64{size})
				if err != nil {
					break
				}
				held = append(held, r)
			}
		}
	}
	return held
}
