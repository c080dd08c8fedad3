package shm

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// droppingUnitConfig is a unit of 8 MiB in 1 MiB segments, prefaulted
// lazily: a 7 MiB put and then two 4 MiB ones make it drop every segment
// it has (they are all too small, and empty) and map new ones.
func droppingUnitConfig() storage.Config {
	cfg := storage.DefaultConfig()
	cfg.Capacity = 8 << 20
	cfg.SegmentSize = 1 << 20
	return cfg
}

// mappedIDs returns the ids of the segments c maps, sorted.
func mappedIDs(c *Conn) []uint32 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Sorted(maps.Keys(c.segs))
}

func liveIDs(u *storage.Unit) []uint32 {
	var ids []uint32
	for _, s := range u.Segments() {
		ids = append(ids, s.ID)
	}
	slices.Sort(ids)
	return ids
}

// staleMemfds counts this process's mappings (/proc/self/maps) and fds
// (/proc/self/fd) of segment memfds whose id is not in live: the unit
// swaps a dropped segment's pages for anonymous memory and closes its
// fd, so in this process, where the unit runs too, only a client can
// still reach them.
func staleMemfds(t *testing.T, live []uint32) (maps, fds int) {
	t.Helper()
	stale := func(s string) bool {
		_, rest, ok := strings.Cut(s, "memfd:tq-segment-")
		if !ok {
			return false
		}
		id, err := strconv.ParseUint(strings.Fields(rest)[0], 10, 32)
		require.NoError(t, err, "segment id in %q", s)
		return !slices.Contains(live, uint32(id))
	}
	b, err := os.ReadFile("/proc/self/maps")
	require.NoError(t, err)
	for line := range strings.Lines(string(b)) {
		if stale(line) {
			maps++
		}
	}
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && stale(target) {
			fds++
		}
	}
	return maps, fds
}

// churnSegments makes the unit drop all its segments and map new ones,
// rounds times, through w: a 7 MiB put, then two 4 MiB ones, each
// viewed through r (which maps its segments) and freed.
func churnSegments(t *testing.T, w, r *Conn, rounds int) {
	t.Helper()
	ctx := t.Context()
	for round := range rounds {
		sizes := []int{7 << 20}
		if round%2 == 1 {
			sizes = []int{4 << 20, 4 << 20}
		}
		var extents [][][]byte
		for i, n := range sizes {
			extents = append(extents, [][]byte{bytes.Repeat([]byte{byte(round*2 + i + 1)}, n)})
		}
		addrs, err := w.Write(ctx, extents)
		require.NoError(t, err, "round %d: write %v bytes", round, sizes)
		l, err := r.View(ctx, addrs)
		require.NoError(t, err, "round %d: view", round)
		for i := range sizes {
			require.Equal(t, extents[i][0], l.Bytes(i), "round %d: view %d", round, i)
		}
		l.Release()
		require.NoError(t, w.Free(ctx, addrs), "round %d: free", round)
	}
}

// requireFollowsUnit waits until c maps no segment the unit dropped, and
// until no mapping or fd of this process reaches one.
func requireFollowsUnit(t *testing.T, c *Conn, u *storage.Unit) {
	t.Helper()
	waitFor(t, "the client's mappings follow the unit's segments", func() error {
		live := liveIDs(u)
		if mapped := mappedIDs(c); slices.ContainsFunc(mapped, func(id uint32) bool { return !slices.Contains(live, id) }) {
			return fmt.Errorf("client maps segments %v, the unit has %v", mapped, live)
		}
		if maps, fds := staleMemfds(t, live); maps+fds > 0 {
			return fmt.Errorf("%d mappings and %d fds of dropped segments in /proc/self (the unit has %v)", maps, fds, live)
		}
		return nil
	})
}

// TestDroppedSegmentsUnmapped: a unit drops empty segments to map larger
// ones (storage.Unit's planGrowth), and a client's mappings of them go
// too, once no view of the client reads them: a memfd's pages are freed
// only when no process maps it, and a trainer lives for days while a
// unit's segments come and go. A Conn used to keep every segment it had
// mapped until Close. It checks both ways the Conn learns of drops: the
// client that makes the unit grow maps a new segment and looks at once;
// a client that only reads, and then sits idle, looks every sweepEvery.
func TestDroppedSegmentsUnmapped(t *testing.T) {
	defer func(d time.Duration) { sweepEvery = d }(sweepEvery)
	for _, control := range []Control{ControlSocket, ControlRing} {
		t.Run("control="+control.String(), func(t *testing.T) {
			tu := startUnit(t, droppingUnitConfig(), storage.ServerConfig{})
			sweepEvery = time.Hour // the writer sees drops as it maps new segments
			writer := dialUnit(t, tu, Config{Control: control})
			sweepEvery = 20 * time.Millisecond
			reader := dialUnit(t, tu, Config{Control: control})

			churnSegments(t, writer, writer, 6)
			requireFollowsUnit(t, writer, tu.u)

			churnSegments(t, writer, reader, 6)
			requireFollowsUnit(t, reader, tu.u)
			requireFollowsUnit(t, writer, tu.u)
		})
	}
}

// TestViewOutlivesDropSweep: a view held while its Conn sweeps stays
// mapped and reads its bytes, and a segment the unit keeps for it is not
// unmapped under it; once it is released and the unit drops the
// segment, the mapping goes.
func TestViewOutlivesDropSweep(t *testing.T) {
	defer func(d time.Duration) { sweepEvery = d }(sweepEvery)
	sweepEvery = 20 * time.Millisecond
	tu := startUnit(t, droppingUnitConfig(), storage.ServerConfig{})
	c := dialUnit(t, tu, Config{})
	other := dialUnit(t, tu, Config{})
	ctx := t.Context()
	want := bytes.Repeat([]byte("held"), 1<<20) // 4 MiB
	addrs, err := c.Write(ctx, [][][]byte{{want}})
	require.NoError(t, err)
	l, err := c.View(ctx, addrs)
	require.NoError(t, err)
	require.NoError(t, c.Free(ctx, addrs)) // the lease keeps the extent
	// Another client churns the rest of the unit: the held segment is
	// not empty, so it stays, and so does c's mapping of it.
	for range 4 {
		got, err := other.Write(ctx, [][][]byte{{make([]byte, 3<<20)}})
		require.NoError(t, err)
		require.NoError(t, other.Free(ctx, got))
	}
	time.Sleep(10 * sweepEvery) // sweeps run meanwhile
	require.Contains(t, mappedIDs(c), addrs[0].Segment)
	require.True(t, bytes.Equal(l.Bytes(0), want), "a held view changed")
	l.Release()
	// Now a 7 MiB put needs the held segment's room: the unit drops it.
	got, err := other.Write(ctx, [][][]byte{{make([]byte, 7<<20)}})
	require.NoError(t, err, "write 7 MiB once the view was released")
	require.NotContains(t, liveIDs(tu.u), addrs[0].Segment)
	requireFollowsUnit(t, c, tu.u)
	require.NoError(t, other.Free(ctx, got))
}

// TestSweepKeepsHeldSegments: a sweep never unmaps a segment that a
// lease's view or a reservation's buffer of this Conn reaches, whatever
// the unit answers. A buggy or hostile unit may answer SHM_SEGMENTS with
// no segment at all; the sweep used to unmap every segment then, under
// the views the caller still reads and the buffer it still fills, and the
// next touch was a SIGSEGV of the whole process. A unit closed while its
// server still serves (a storage.Server whose Unit was closed first) used
// to answer so too; it answers ErrClosed now, and the sweep unmaps
// nothing.
func TestSweepKeepsHeldSegments(t *testing.T) {
	defer func(d time.Duration) { sweepEvery = d }(sweepEvery)
	sweepEvery = 10 * time.Millisecond
	for _, control := range []Control{ControlSocket, ControlRing} {
		t.Run("control="+control.String(), func(t *testing.T) {
			tu := startUnit(t, droppingUnitConfig(), storage.ServerConfig{})
			c := dialUnit(t, tu, Config{Control: control})
			ctx := t.Context()
			want := bytes.Repeat([]byte("view"), 1<<18) // 1 MiB
			addrs, err := c.Write(ctx, [][][]byte{{want}})
			require.NoError(t, err)
			l, err := c.View(ctx, addrs)
			require.NoError(t, err)
			defer l.Release()
			r, err := c.Reserve(ctx, []int64{2 << 20})
			require.NoError(t, err)
			defer r.abort()
			held := []uint32{addrs[0].Segment, r.Addr(0).Segment}

			// An answer that names no segment: the unpinned ones go.
			c.mu.RLock()
			mapped := maps.Clone(c.segs)
			var pinned []uint32
			for id, s := range mapped {
				if s.pins.Load() > 0 {
					pinned = append(pinned, id)
				}
			}
			c.mu.RUnlock()
			slices.Sort(pinned)
			c.unmapDropped(mapped, &wirepb.ShmSegmentsReply{})
			require.Equal(t, pinned, mappedIDs(c), "segments mapped after an answer that names none")
			for _, id := range held {
				require.Contains(t, pinned, id, "segment %d, which a held view or reservation reaches", id)
			}
			require.True(t, bytes.Equal(l.Bytes(0), want), "a held view changed")
			clear(r.Buf(0)) // faults if unmapped

			// A closed unit answers ErrClosed, and sweeps keep every mapping.
			require.NoError(t, tu.u.Close()) // the server answers on
			err = c.wc.Do(ctx, wire.OpShmSegments, &wirepb.Empty{}, nil, &wirepb.ShmSegmentsReply{}, nil)
			require.ErrorIs(t, err, engine.ErrClosed, "a closed unit's SHM_SEGMENTS")
			for range 3 { // sweeps that heard it
				c.sweepKick <- struct{}{}
			}
			time.Sleep(20 * sweepEvery)
			require.Equal(t, pinned, mappedIDs(c), "segments mapped after sweeps of a closed unit")
			require.True(t, bytes.Equal(l.Bytes(0), want), "a held view changed")
			clear(r.Buf(0))
		})
	}
}
