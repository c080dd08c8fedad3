package controller

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"golang.org/x/sys/unix"
)

// ckptUnit is a storage unit's data plane in memory: extents by segment.
// Segments a load writes are numbered from ckptFirstWritten.
type ckptUnit struct {
	mu   sync.Mutex
	segs map[uint32][]byte
	next uint32
}

const ckptFirstWritten = 101

func newCkptUnit() *ckptUnit {
	return &ckptUnit{segs: map[uint32][]byte{}, next: ckptFirstWritten - 1}
}

func (u *ckptUnit) Write(_ context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []engine.RemoteAddr
	for _, e := range extents {
		var b []byte
		for _, p := range e {
			b = append(b, p...)
		}
		u.next++
		u.segs[u.next] = b
		out = append(out, engine.RemoteAddr{Segment: u.next, Gen: 1, Len: uint64(len(b))})
	}
	return out, nil
}

func (u *ckptUnit) Read(_ context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, r := range ranges {
		s, ok := u.segs[r.Segment]
		if !ok || r.Offset+r.Len > uint64(len(s)) {
			return fmt.Errorf("segment %d at %d+%d: %w", r.Segment, r.Offset, r.Len, engine.ErrNotFound)
		}
		copy(dst[i], s[r.Offset:r.Offset+r.Len])
	}
	return nil
}

func (u *ckptUnit) Free(context.Context, []engine.RemoteAddr) error { return nil }
func (u *ckptUnit) Close() error                                    { return nil }

var _ engine.DataConn = (*ckptUnit)(nil)

// written returns what a load wrote to u, by segment.
func (u *ckptUnit) written() map[uint32]string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[uint32]string{}
	for seg, b := range u.segs {
		if seg >= ckptFirstWritten {
			out[seg] = string(b)
		}
	}
	return out
}

// ckptWithData starts a server over a controller whose partition "p"
// holds two rows with an opaque field "x" and a dense float32 field "y"
// of shape (2), their bytes on one unit (segments 1 and 2), and saves
// checkpoint "ck". data.bin holds the cells in state order: x of row 0
// at 0, y of row 0 at 8, x of row 1 at 16, y of row 1 at 24.
func ckptWithData(t *testing.T) (*Controller, *Server, *ckptUnit, string) {
	t.Helper()
	c, s, unit, dir := ckptSaved(t, 2, map[uint32][]byte{1: []byte("AAAAAAAABBBBBBBB"), 2: []byte("yyyy0000yyyy1111")}, func(id engine.UnitID) []engine.CommitField {
		return []engine.CommitField{
			{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Runs: []engine.CellRun{{Unit: id, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: 2}}},
			{Name: "y", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}, Runs: []engine.CellRun{{Unit: id, First: engine.RemoteAddr{Segment: 2, Gen: 1, Len: 8}, Count: 2}}},
		}
	})
	b, err := os.ReadFile(filepath.Join(dir, "ck", dataFile))
	require.NoError(t, err)
	require.Equal(t, "AAAAAAAAyyyy0000BBBBBBBByyyy1111", string(b))
	return c, s, unit, dir
}

// ckptSaved starts a server over a controller with one unit holding segs,
// whose partition "p" has rows rows with the fields fields gives (for the
// unit's id), and saves checkpoint "ck" in the directory it returns.
func ckptSaved(t *testing.T, rows int, segs map[uint32][]byte, fields func(engine.UnitID) []engine.CommitField) (*Controller, *Server, *ckptUnit, string) {
	t.Helper()
	// The unit sends no heartbeat: it stays alive for the test's length
	// however slow the machine (a save and a load of 80000 cells under
	// -race took past the default timeout on a loaded one).
	cfg := DefaultConfig()
	cfg.UnitTimeout = time.Hour
	c := newController(t, cfg)
	id, err := c.units.Register(engine.UnitInfo{Incarnation: 11, Host: "h", Addrs: []string{"tcp://127.0.0.1:1"}, Name: "u1", Capacity: 1 << 30}, true)
	require.NoError(t, err)
	unit := newCkptUnit()
	maps.Copy(unit.segs, segs)
	fs := fields(id)
	var names []string
	for _, f := range fs {
		names = append(names, f.Name)
	}
	m := insert(t, c, "p", rows, names...)
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: fs})
	require.NoError(t, err)
	dir := t.TempDir()
	s := NewServer(c, ServerConfig{CheckpointDir: dir, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) { return unit, nil }})
	t.Cleanup(func() { s.Close() })
	_, err = s.SaveCheckpoint(context.Background(), "ck", nil)
	require.NoError(t, err)
	return c, s, unit, dir
}

// segmentsOf returns the segments that hold the cells of field f in
// rows 0 and 1 of partition "p".
func segmentsOf(t *testing.T, c *Controller, f string) []uint32 {
	t.Helper()
	m, err := c.RowsMeta("p", []uint64{0, 1}, []string{f})
	require.NoError(t, err)
	var segs []uint32
	for _, l := range m.Cells[f] {
		segs = append(segs, l.Addr.Segment)
	}
	return segs
}

// TestCheckpointLoadServesSavedBytes: a checkpoint with data loaded
// writes each column's saved bytes to the units and points the cells at
// them.
func TestCheckpointLoadServesSavedBytes(t *testing.T) {
	c, s, unit, _ := ckptWithData(t)
	require.NoError(t, s.LoadCheckpoint(context.Background(), "ck"))
	got := map[string]bool{}
	for _, b := range unit.written() {
		got[b] = true
	}
	assert.Equal(t, map[string]bool{"AAAAAAAABBBBBBBB": true, "yyyy0000yyyy1111": true}, got)
	for _, f := range []string{"x", "y"} {
		for _, seg := range segmentsOf(t, c, f) {
			assert.GreaterOrEqual(t, seg, uint32(ckptFirstWritten), "field %q: a cell still on its saved segment", f)
		}
	}
}

// TestCheckpointLoadRefusesDamagedData: a byte of data.bin changed on
// disk after the save fails the load with engine.ErrCorrupt, naming
// data.bin, the damaged cell's offset and the cell, before anything is
// written to a unit or the state replaced.
func TestCheckpointLoadRefusesDamagedData(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   int
		want string
	}{
		{"opaque cell", 3, `data.bin: the cell at byte 0 (8 bytes) of partition "p", field "x", row 0`},
		{"dense cell", 27, `data.bin: the cell at byte 24 (8 bytes) of partition "p", field "y", row 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s, unit, dir := ckptWithData(t)
			path := filepath.Join(dir, "ck", dataFile)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[tc.at] ^= 0x20
			require.NoError(t, os.WriteFile(path, b, 0o600))

			err = s.LoadCheckpoint(context.Background(), "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, tc.want)
			assert.Empty(t, unit.written(), "the load wrote to the unit")
			assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
			assert.Equal(t, []uint32{2, 2}, segmentsOf(t, c, "y"), "the state was replaced")
		})
	}
}

// TestCheckpointLoadRefusesACellOutsideItsDataFile: a state file (its
// checksum good) whose cell lies past the end of data.bin, or wraps
// around, fails the load with engine.ErrCorrupt naming data.bin and the
// cell, before anything is written to a unit or the state replaced.
func TestCheckpointLoadRefusesACellOutsideItsDataFile(t *testing.T) {
	for _, tc := range []struct {
		name     string
		off, len uint64
	}{
		{"past the end", 28, 8},
		{"at the end", 32, 1},
		{"wrapping", math.MaxUint64 - 3, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s, unit, dir := ckptWithData(t)
			path := filepath.Join(dir, "ck", stateFile)
			head, parts, rows := readStateMessages(t, path)
			cell := rows[0][1].Cells[1] // y of row 1
			require.True(t, cell.InFile)
			cell.FileOffset, cell.Len = tc.off, tc.len
			writeStateFile(t, path, head, parts, rows, nil)

			err := s.LoadCheckpoint(context.Background(), "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, fmt.Sprintf(`the cell at byte %d (%d bytes) of partition "p", field "y", row 1 is outside data.bin (32 bytes)`, tc.off, tc.len))
			assert.Empty(t, unit.written(), "the load wrote to the unit")
			assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
			assert.Equal(t, []uint32{2, 2}, segmentsOf(t, c, "y"), "the state was replaced")
		})
	}
}

// TestCheckpointLoadWithoutItsDataFile: a checkpoint with data whose
// data.bin is missing (copied without it, or deleted) is listed, and its
// load fails as damaged, naming data.bin, changing nothing. It used to
// say there was no such checkpoint (engine.ErrNotFound).
func TestCheckpointLoadWithoutItsDataFile(t *testing.T) {
	c, s, unit, dir := ckptWithData(t)
	require.NoError(t, os.Remove(filepath.Join(dir, "ck", dataFile)))
	list, err := s.Checkpoints()
	require.NoError(t, err)
	require.Len(t, list, 1)
	err = s.LoadCheckpoint(context.Background(), "ck")
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.NotErrorIs(t, err, engine.ErrNotFound, "the checkpoint is there")
	assert.ErrorContains(t, err, dataFile)
	assert.Empty(t, unit.written())
	assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
}

// TestCheckpointWithoutChecksumsLoads: a checkpoint saved before cells
// carried checksums (testdata/checkpoint-unchecked, written by the code
// of commit 960100a from ckptWithData's state) still loads, unchecked: a
// changed byte of its data.bin is loaded as it is.
func TestCheckpointWithoutChecksumsLoads(t *testing.T) {
	for _, tc := range []struct {
		name string
		flip bool
		want map[string]bool
	}{
		{"intact", false, map[string]bool{"AAAAAAAABBBBBBBB": true, "yyyy0000yyyy1111": true}},
		{"changed byte", true, map[string]bool{"AAAaAAAABBBBBBBB": true, "yyyy0000yyyy1111": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, DefaultConfig())
			_, err := c.units.Register(engine.UnitInfo{Incarnation: 12, Host: "h", Addrs: []string{"tcp://127.0.0.1:2"}, Name: "u2", Capacity: 1 << 20}, true)
			require.NoError(t, err)
			unit := newCkptUnit()
			root := t.TempDir()
			require.NoError(t, os.Mkdir(filepath.Join(root, "old"), 0o700))
			for _, f := range []string{stateFile, dataFile} {
				b, err := os.ReadFile(filepath.Join("testdata", "checkpoint-unchecked", f))
				require.NoError(t, err)
				if f == dataFile && tc.flip {
					b[3] ^= 0x20
				}
				require.NoError(t, os.WriteFile(filepath.Join(root, "old", f), b, 0o600))
			}
			s := NewServer(c, ServerConfig{CheckpointDir: root, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) { return unit, nil }})
			t.Cleanup(func() { s.Close() })

			require.NoError(t, s.LoadCheckpoint(context.Background(), "old"))
			got := map[string]bool{}
			for _, b := range unit.written() {
				got[b] = true
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestCheckpointChecksumsOfMergedAndBatchedReads: a save reads cells
// that lie back to back on the unit and in data.bin as one range, and
// cuts a unit's reads into batches of at most 65536 ranges; every cell's
// checksum is still its own, so the checkpoint loads, and a changed byte
// is found in the cell that holds it.
func TestCheckpointChecksumsOfMergedAndBatchedReads(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rows   int
		fields []string // each on its own segment of rows 1-byte cells
		at     int      // the byte of data.bin to change
		want   string
	}{
		// One field: the cells of both rows are one range.
		{"one range", 2, []string{"x"}, 1, `data.bin: the cell at byte 1 (1 bytes) of partition "p", field "x", row 1`},
		// Two fields interleaved in data.bin: a range per cell, 2*40000
		// of them, read in two batches.
		{"two batches", 40000, []string{"x", "y"}, 2*40000 - 1, `data.bin: the cell at byte 79999 (1 bytes) of partition "p", field "y", row 39999`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := map[uint32][]byte{}
			for i := range tc.fields {
				b := make([]byte, tc.rows)
				for k := range b {
					b[k] = byte(k*7 + i)
				}
				segs[uint32(i+1)] = b
			}
			_, s, unit, dir := ckptSaved(t, tc.rows, segs, func(id engine.UnitID) []engine.CommitField {
				var fs []engine.CommitField
				for i, f := range tc.fields {
					fs = append(fs, engine.CommitField{Name: f, DType: engine.Bytes, Kind: engine.Opaque,
						Runs: []engine.CellRun{{Unit: id, First: engine.RemoteAddr{Segment: uint32(i + 1), Gen: 1, Len: 1}, Count: tc.rows}}})
				}
				return fs
			})
			// Saved again, loaded whole: every checksum is right.
			_, err := s.SaveCheckpoint(context.Background(), "ck2", nil)
			require.NoError(t, err)
			require.NoError(t, s.LoadCheckpoint(context.Background(), "ck2"))
			assert.Len(t, unit.written(), len(tc.fields))

			path := filepath.Join(dir, "ck", dataFile)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[tc.at] ^= 0x01
			require.NoError(t, os.WriteFile(path, b, 0o600))
			written := len(unit.written())
			err = s.LoadCheckpoint(context.Background(), "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, tc.want)
			assert.Len(t, unit.written(), written, "the load wrote to the unit")
		})
	}
}

// A cell produced with no location (unit 0: a commit without locations,
// for metadata-only use) carries no bytes: a checkpoint with data saves
// it as it is, not as lost, and it reads the same after the load.
func TestCheckpointWithDataKeepsCellsWithoutLocation(t *testing.T) {
	c, s, _, _ := ckptSaved(t, 2, map[uint32][]byte{1: []byte("AAAAAAAABBBBBBBB")}, func(id engine.UnitID) []engine.CommitField {
		return []engine.CommitField{
			{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Runs: []engine.CellRun{{Unit: id, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 8}, Count: 2}}},
			{Name: "meta", DType: engine.Int64, Kind: engine.Dense, Shape: engine.Shape{}}, // no locations
		}
	})
	before, err := c.RowsMeta("p", []uint64{0, 1}, []string{"meta"})
	require.NoError(t, err)
	require.Equal(t, []engine.CellLoc{{}, {}}, before.Cells["meta"], "cells without a location")

	infos, err := s.Checkpoints()
	require.NoError(t, err)
	require.Len(t, infos, 1)
	assert.Zero(t, infos[0].Lost, "cells lost at save (none were)")

	require.NoError(t, s.LoadCheckpoint(context.Background(), "ck"))
	after, err := c.RowsMeta("p", []uint64{0, 1}, []string{"meta"})
	require.NoError(t, err)
	assert.Equal(t, before.Cells["meta"], after.Cells["meta"], "cells without a location after the load")
}

// drainingWrites is a unit connection whose first Write marks unit
// target draining and lists its cells, as `tq unit drain` does, while a
// checkpoint load is writing to it.
type drainingWrites struct {
	*ckptUnit
	c      *Controller
	target engine.UnitID
	once   *sync.Once
	listed *[]engine.UnitCell
	t      *testing.T
}

func (d drainingWrites) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	d.once.Do(func() {
		_, err := d.c.DrainUnit(d.target, true)
		require.NoError(d.t, err)
		cells, _, err := d.c.UnitCells(d.target, nil, 0, 0)
		require.NoError(d.t, err)
		*d.listed = cells
	})
	return d.ckptUnit.Write(ctx, extents)
}

// A checkpoint load with data picks its target units (alive, not
// draining) when it starts writing, and takes the state over once every
// cell is written (for a large checkpoint, minutes later). A unit marked
// draining meanwhile may have been drained already, by a mover that found
// none of the state's cells on it: the load then fails, naming the unit,
// with nothing taken over (what it wrote goes back), and loads again onto
// the units that take cells.
func TestCheckpointLoadRacesDrain(t *testing.T) {
	c, _, unit, dir := ckptWithData(t)
	// A second, roomier unit: the load writes to it first.
	big, err := c.units.Register(engine.UnitInfo{Incarnation: 22, Host: "h", Addrs: []string{"tcp://127.0.0.1:2"}, Name: "u2", Capacity: 1 << 40}, true)
	require.NoError(t, err)
	var once sync.Once
	var listed []engine.UnitCell
	s := NewServer(c, ServerConfig{CheckpointDir: dir, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) {
		return drainingWrites{ckptUnit: unit, c: c, target: big, once: &once, listed: &listed, t: t}, nil
	}})
	t.Cleanup(func() { s.Close() })
	before, err := c.RowsMeta("p", []uint64{0, 1}, nil)
	require.NoError(t, err)
	err = s.LoadCheckpoint(context.Background(), "ck")
	require.ErrorIs(t, err, engine.ErrUnavailable, "a load onto a unit marked draining while it wrote")
	require.ErrorContains(t, err, "draining")
	require.Empty(t, listed, "the drain found no cell on the unit")
	cells, _, err := c.UnitCells(big, nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells, "cells the load put on unit %d after it was marked draining and its drain found it empty", big)
	after, err := c.RowsMeta("p", []uint64{0, 1}, nil)
	require.NoError(t, err)
	assert.Equal(t, before.Cells, after.Cells, "the state the failed load left")

	require.NoError(t, s.LoadCheckpoint(context.Background(), "ck"), "loading again")
	cells, _, err = c.UnitCells(big, nil, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, cells, "cells on the draining unit")
}

// TestCheckpointSaveOnAFullDisk: a checkpoint with data whose data.bin
// does not fit on the disk fails the save with an error (ENOSPC), leaving
// nothing behind. data.bin was mapped without its blocks allocated, so the
// first copy into a page with no room faulted (SIGBUS), killing the
// controller (with --in-memory, and every row it knew of). The disk is a
// small tmpfs: the test needs to be able to mount one.
func TestCheckpointSaveOnAFullDisk(t *testing.T) {
	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=64k,mode=0700"); err != nil {
		t.Skipf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	cfg := DefaultConfig()
	cfg.UnitTimeout = time.Hour
	c := newController(t, cfg)
	id, err := c.units.Register(engine.UnitInfo{Incarnation: 13, Host: "h", Addrs: []string{"tcp://127.0.0.1:3"}, Name: "u3", Capacity: 1 << 30}, true)
	require.NoError(t, err)
	unit := newCkptUnit()
	unit.segs[1] = make([]byte, 1<<20)
	m := insert(t, c, "p", 1, "x")
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Bytes, Kind: engine.Opaque, Runs: []engine.CellRun{{Unit: id, First: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 1 << 20}, Count: 1}}},
	}})
	require.NoError(t, err)
	s := NewServer(c, ServerConfig{CheckpointDir: root, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) { return unit, nil }})
	t.Cleanup(func() { s.Close() })

	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true)) // a fault fails this test, not the whole run
	var saveErr error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("the save faulted writing data.bin: %v", r)
			}
		}()
		_, saveErr = s.SaveCheckpoint(context.Background(), "ck", nil)
	}()
	require.ErrorIs(t, saveErr, unix.ENOSPC)
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	assert.Empty(t, entries, "left behind")
}

// TestCheckpointMetadataOthersCanRead: a checkpoint's metadata is refused
// unless every client can read it back. Python's json.loads fails on
// invalid UTF-8 (UnicodeDecodeError) and on deep nesting
// (RecursionError), and list_checkpoints decodes every checkpoint's
// metadata: one such checkpoint broke the list for all (and the load
// that answers with it). Go's json.Unmarshal accepted both.
func TestCheckpointMetadataOthersCanRead(t *testing.T) {
	c := newController(t, DefaultConfig())
	s := NewServer(c, ServerConfig{CheckpointDir: t.TempDir()})
	t.Cleanup(func() { s.Close() })
	deep := `{"a":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}`
	for name, md := range map[string]string{
		"invalid-utf8": "{\"step\": \"caf\xe9\"}",
		"nested-2000":  deep,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := s.SaveCheckpoint(context.Background(), "ck", []byte(md))
			require.ErrorIs(t, err, engine.ErrInvalid)
			list, err := s.Checkpoints()
			require.NoError(t, err)
			assert.Empty(t, list, "nothing saved")
		})
	}
	// What a client can read back is kept as given.
	ok := `{"step": "café", "a": ` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`
	info, err := s.SaveCheckpoint(context.Background(), "ck", []byte(ok))
	require.NoError(t, err)
	assert.Equal(t, ok, string(info.Metadata))
}

// TestCheckpointFilesThatAreNotFiles: a checkpoint whose state.pb or
// data.bin is a named pipe (or a device, or a directory) is refused as
// damaged, naming the file and what it is, and the load changes nothing.
// Opening a named pipe blocked until something wrote to it: a listing
// (and tq checkpoint save, which lists first) hung, and a load hung
// holding the checkpoint lock, so every later save and load hung too.
func TestCheckpointFilesThatAreNotFiles(t *testing.T) {
	// unblock opens a pipe for writing, so that an open for reading
	// blocked on it returns (the test fails, and does not hang).
	unblock := func(path string) {
		if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			unix.Close(fd)
		}
	}
	// within runs f, failing the test if it does not return in a
	// generous while.
	within := func(t *testing.T, pipe, what string, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); f() }()
		for deadline := time.Now().Add(30 * time.Second); ; {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				for !func() bool {
					unblock(pipe)
					select {
					case <-done:
						return true
					default:
						return false
					}
				}() {
					time.Sleep(10 * time.Millisecond)
				}
				t.Fatalf("%s blocks on the named pipe %s", what, filepath.Base(pipe))
			}
		}
	}
	t.Run("state file a pipe", func(t *testing.T) {
		c, s, unit, dir := ckptWithData(t)
		pipe := filepath.Join(dir, "ck", stateFile)
		require.NoError(t, os.Remove(pipe))
		require.NoError(t, unix.Mkfifo(pipe, 0o600))
		within(t, pipe, "a listing", func() {
			list, err := s.Checkpoints()
			require.NoError(t, err)
			require.Len(t, list, 1)
			assert.Contains(t, list[0].Unusable, stateFile+" is a named pipe")
		})
		within(t, pipe, "CheckCheckpoint", func() {
			err := CheckCheckpoint(dir, "ck")
			assert.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, stateFile+" is a named pipe")
		})
		within(t, pipe, "a load", func() {
			err := s.LoadCheckpoint(context.Background(), "ck")
			assert.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, stateFile+" is a named pipe")
		})
		assert.Empty(t, unit.written(), "the load wrote to the unit")
		assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
	})
	t.Run("data file a pipe", func(t *testing.T) {
		c, s, unit, dir := ckptWithData(t)
		pipe := filepath.Join(dir, "ck", dataFile)
		require.NoError(t, os.Remove(pipe))
		require.NoError(t, unix.Mkfifo(pipe, 0o600))
		within(t, pipe, "a load", func() {
			err := s.LoadCheckpoint(context.Background(), "ck")
			assert.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, dataFile+" is a named pipe")
		})
		assert.Empty(t, unit.written(), "the load wrote to the unit")
		assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
	})
	t.Run("state file a device or a directory", func(t *testing.T) {
		c, s, unit, dir := ckptWithData(t)
		path := filepath.Join(dir, "ck", stateFile)
		for what, make := range map[string]func() error{
			"a device":    func() error { return os.Symlink("/dev/zero", path) },
			"a directory": func() error { return os.Mkdir(path, 0o700) },
		} {
			require.NoError(t, os.RemoveAll(path))
			require.NoError(t, make())
			err := s.LoadCheckpoint(context.Background(), "ck")
			assert.ErrorIs(t, err, engine.ErrCorrupt, what)
			assert.ErrorContains(t, err, stateFile+" is "+what)
		}
		assert.Empty(t, unit.written(), "the load wrote to the unit")
		assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
	})
}

// TestCheckpointSaveOverWhatIsNoCheckpoint: a save under a name that is
// a dangling symbolic link, a file or a named pipe is refused
// (engine.ErrInvalid), naming it and what it is, and leaves it and the
// directory as they were. Over a dangling link the save failed as it
// renamed its finished checkpoint into place, with "rename
// .../.NAME.tmp-... .../NAME: not a directory", naming a directory the
// user never saw; over a file, as "inspect checkpoint directory: open
// ...: not a directory".
func TestCheckpointSaveOverWhatIsNoCheckpoint(t *testing.T) {
	root := t.TempDir()
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	s := NewServer(c, ServerConfig{CheckpointDir: root})
	t.Cleanup(func() { s.Close() })
	gone := filepath.Join(t.TempDir(), "gone")
	require.NoError(t, os.Symlink(gone, filepath.Join(root, "dangling")))
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), []byte("mine"), 0o600))
	require.NoError(t, unix.Mkfifo(filepath.Join(root, "pipe"), 0o600))
	before := func() []string {
		entries, err := os.ReadDir(root)
		require.NoError(t, err)
		var out []string
		for _, e := range entries {
			out = append(out, e.Name()+" "+e.Type().String())
		}
		return out
	}()
	for name, want := range map[string]string{
		"dangling": "is a symbolic link to " + gone + ", which is not there",
		"file":     "is a file, not a checkpoint directory",
		"pipe":     "is a named pipe, not a checkpoint directory",
	} {
		_, err := s.SaveCheckpoint(context.Background(), name, nil)
		require.ErrorIs(t, err, engine.ErrInvalid, name)
		assert.ErrorContains(t, err, filepath.Join(root, name)+" "+want)
		assert.NotContains(t, err.Error(), ".tmp-", "names the temporary directory")
	}
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	var after []string
	for _, e := range entries {
		after = append(after, e.Name()+" "+e.Type().String())
	}
	assert.Equal(t, before, after)
	b, err := os.ReadFile(filepath.Join(root, "file"))
	require.NoError(t, err)
	assert.Equal(t, "mine", string(b))
}

// unreadableUnit is a unit whose reads fail: a save cut short half-way.
type unreadableUnit struct{ *ckptUnit }

func (unreadableUnit) Read(context.Context, []engine.RemoteAddr, [][]byte) error {
	return fmt.Errorf("injected read failure: %w", engine.ErrUnavailable)
}

// checkpointFiles returns the files under dir, by path below it, with
// their bytes.
func checkpointFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		out[rel] = string(b)
		return err
	}))
	return out
}

// TestCheckpointFailedSaveKeepsThePreviousOne: a save over a checkpoint
// that fails half-way (a unit's read fails while data.bin is being
// filled) leaves the previous checkpoint as it was, byte for byte, and
// nothing else in the directory (no partial checkpoint under any name),
// and the previous one still loads.
func TestCheckpointFailedSaveKeepsThePreviousOne(t *testing.T) {
	c, s, unit, dir := ckptWithData(t)
	before := checkpointFiles(t, dir)
	require.Contains(t, before, filepath.Join("ck", dataFile))
	failing := NewServer(c, ServerConfig{CheckpointDir: dir, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) {
		return unreadableUnit{unit}, nil
	}})
	t.Cleanup(func() { failing.Close() })
	_, err := failing.SaveCheckpoint(context.Background(), "ck", []byte(`{"step": 2}`))
	require.ErrorIs(t, err, engine.ErrUnavailable)
	assert.ErrorContains(t, err, "save checkpoint ck: read cells of storage unit")
	assert.Equal(t, before, checkpointFiles(t, dir), "the directory after the failed save")
	list, err := s.Checkpoints()
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Empty(t, list[0].Metadata, "the failed save's metadata is listed")
	require.NoError(t, s.LoadCheckpoint(context.Background(), "ck"))
}

// TestCheckpointLoadRefusesADamagedStateFile: a checkpoint whose
// state.pb is empty, cut short, has a bit flipped or is no state file at
// all is refused as damaged (engine.ErrCorrupt), naming the checkpoint,
// state.pb and what is wrong, before anything is written to a unit or
// the state replaced. The listing, which reads state headers alone,
// marks it unusable where its header is damaged.
func TestCheckpointLoadRefusesADamagedStateFile(t *testing.T) {
	for _, tc := range []struct {
		name         string
		damage       func([]byte) []byte
		want         string
		headerDamage bool
	}{
		{"empty", func([]byte) []byte { return nil }, "an empty file", true},
		{"cut short", func(b []byte) []byte { return b[:len(b)-3] }, "left in the file", false},
		{"a bit flipped", func(b []byte) []byte { b[len(b)/2] ^= 0x04; return b }, "checksum", false},
		{"another format", func([]byte) []byte { return []byte(`{"format": "something else"}`) }, "header at byte 0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s, unit, dir := ckptWithData(t)
			path := filepath.Join(dir, "ck", stateFile)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, tc.damage(b), 0o600))

			err = s.LoadCheckpoint(context.Background(), "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, "load checkpoint ck: state.pb: ")
			assert.ErrorContains(t, err, tc.want)
			assert.Empty(t, unit.written(), "the load wrote to the unit")
			assert.Equal(t, []uint32{1, 1}, segmentsOf(t, c, "x"), "the state was replaced")
			assert.Equal(t, []string{"p"}, c.Partitions())
			list, err := s.Checkpoints()
			require.NoError(t, err)
			require.Len(t, list, 1)
			if tc.headerDamage {
				assert.Contains(t, list[0].Unusable, stateFile+": ")
			} else {
				assert.Empty(t, list[0].Unusable, "the header is whole")
			}
		})
	}
}

// TestCheckpointConcurrentSavesOfOneName: saves of one name at once
// (and listings meanwhile) each succeed, one after the other: what is
// left under the name is one of them whole, and nothing beside it.
func TestCheckpointConcurrentSavesOfOneName(t *testing.T) {
	_, s, _, dir := ckptWithData(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = s.SaveCheckpoint(context.Background(), "ck", fmt.Appendf(nil, `{"save": %d}`, i))
		})
		wg.Go(func() {
			_, err := s.Checkpoints()
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "save %d", i)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "left beside the checkpoint: %v", entries)
	list, err := s.Checkpoints()
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Empty(t, list[0].Unusable)
	assert.Regexp(t, `^\{"save": [0-7]\}$`, string(list[0].Metadata))
	b, err := os.ReadFile(filepath.Join(dir, "ck", dataFile))
	require.NoError(t, err)
	assert.Equal(t, "AAAAAAAAyyyy0000BBBBBBBByyyy1111", string(b))
	require.NoError(t, s.LoadCheckpoint(context.Background(), "ck"))
}

// TestCheckpointWithItsDataFileCutShortIsUnusable: a checkpoint whose
// data.bin is not the size its state says (a copy cut short, data.bin
// the big file of the two) or is missing is listed unusable, naming
// data.bin, and CheckCheckpoint (tq serve --restore's check before it
// listens) refuses it as damaged. Both read the state header alone, so
// such a checkpoint was listed as loadable and passed the check: tq serve
// --restore listened, held clients back, waited for units, and only then
// failed the load.
func TestCheckpointWithItsDataFileCutShortIsUnusable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(path string) error
		want   string
	}{
		{"cut short", func(path string) error { return os.Truncate(path, 16) }, "data.bin holds 16 bytes, the state says 32"},
		{"missing", os.Remove, "no data.bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, s, _, dir := ckptWithData(t)
			require.NoError(t, tc.damage(filepath.Join(dir, "ck", dataFile)))
			list, err := s.Checkpoints()
			require.NoError(t, err)
			require.Len(t, list, 1)
			assert.Contains(t, list[0].Unusable, tc.want)
			err = CheckCheckpoint(dir, "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, `checkpoint "ck" in `+dir)
			assert.ErrorContains(t, err, tc.want)
			err = s.LoadCheckpoint(context.Background(), "ck")
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
