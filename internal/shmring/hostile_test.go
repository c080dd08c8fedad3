package shmring

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDeadlineWakesDespitePeer: the peer clears the sleep word this side
// set before it parked (the word is in the shared region, so the peer can
// write it); a deadline moved to now still wakes the parked read or
// write. Before, SetDeadline woke the sleeper only when it found the
// shared word set, and a read with no earlier deadline stayed parked for
// good (as wire.Conn's reader does after a failed write moves its
// deadline to a grace period).
func TestDeadlineWakesDespitePeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(b *Conn) <-chan result
		bell func(b *Conn) *bell
		move func(b *Conn) error
	}{
		{"read", func(b *Conn) <-chan result { return goRead(b, 1) },
			func(b *Conn) *bell { return &b.in.data },
			func(b *Conn) error { return b.SetReadDeadline(time.Now()) }},
		{"write", func(b *Conn) <-chan result { return goWrite(b, make([]byte, 2*MinRingSize)) },
			func(b *Conn) *bell { return &b.out.space },
			func(b *Conn) error { return b.SetWriteDeadline(time.Now()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, Size(MinRingSize))
			require.NoError(t, Format(mem, MinRingSize))
			la, lb := socketPair(t) // la: the peer's end, which rings nothing
			defer la.Close()
			b, err := NewConn(mem, SideB, lb, nil, Config{Spin: -1})
			require.NoError(t, err)
			defer b.Close()
			done := tc.op(b)
			sleep := tc.bell(b).sleep
			deadline := time.Now().Add(10 * time.Second)
			for sleep.Load() == 0 {
				require.True(t, time.Now().Before(deadline), "the %s never parked", tc.name)
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // parked in its select by now
			sleep.Store(0)                    // the peer clears it
			require.NoError(t, tc.move(b))
			r := within(t, tc.name+" whose deadline moved to now", done, 10*time.Second)
			require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
		})
	}
}

// TestWriteRacingHostileHead: the peer flips the head of the ring this
// side writes between a valid value and an impossible one. Each write
// either succeeds or fails with ErrCorrupt; none panics. Before, the
// self-check of invariant builds (race, invariants: every test run)
// loaded the head a second time after publishing the tail and panicked
// when the peer had moved it in between, so a hostile peer could crash a
// unit built with them.
func TestWriteRacingHostileHead(t *testing.T) {
	mem := make([]byte, Size(MinRingSize))
	require.NoError(t, Format(mem, MinRingSize))
	peer := ringAt(mem, 1, MinRingSize) // B→A, as side A sees it
	stop := make(chan struct{})
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			tail := peer.tail.Load()
			peer.head.Store(tail)         // all read
			peer.head.Store(tail + 1<<40) // impossible
		}
	}()
	defer func() {
		close(stop)
		<-peerDone
	}()
	r := ringAt(mem, 1, MinRingSize) // this side, B, the producer
	var ok, corrupt int
	for i := 0; i < 200_000; i++ {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("write %d panicked on the peer's head: %v", i, p)
				}
			}()
			_, err := r.write([]byte{byte(i)})
			if err != nil {
				require.ErrorIs(t, err, ErrCorrupt)
				corrupt++
			} else {
				ok++
			}
		}()
	}
	t.Logf("%d writes taken, %d refused as corrupt", ok, corrupt)
}
