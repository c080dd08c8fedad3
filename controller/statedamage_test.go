package controller

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// A damaged state file is refused with an error naming the file and
// where in it the damage is; a flipped byte is found by the checksum
// before anything is read into the state. A flip used to read as whatever
// the flipped message then said ('partition "p": a chunk of 0 rows after
// 49 of 50'), and no error said where.
func TestStateFileErrorNamesOffset(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 50, "x")
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))
	path := filepath.Join(dir, stateFile)
	orig, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
		want string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)*2/3] }, "at byte"},
		{"flipped", func(b []byte) []byte { b = append([]byte{}, b...); b[len(b)/2] ^= 0x40; return b }, "checksum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(path, tc.mod(orig), 0o600))
			_, err := c.Load(dir)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.Contains(t, err.Error(), stateFile)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "chunk", "read before its checksum was checked")
		})
	}
}

// logLines collects what a controller reports through Config.Logf.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// An unreadable snapshot is set aside with a line in the log saying which
// and why; when the log cannot make up for the snapshots set aside, the
// error that fails the start names them. Both used to be silent: the
// error said only which records were missing.
func TestSetAsideSnapshotsAreReported(t *testing.T) {
	dir := t.TempDir()
	snaps := twoSnapshotsAndACrash(t, dir)

	damage := func(path string) {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		b[len(b)/2] ^= 0x40
		require.NoError(t, os.WriteFile(path, b, 0o600))
	}
	damage(snaps[0].Path)
	var log logLines
	d, err := New(Config{Dir: dir, Logf: log.logf})
	require.NoError(t, err, "the older snapshot and the records since")
	require.NoError(t, d.Close())
	require.Len(t, log.all(), 1)
	assert.Contains(t, log.all()[0], filepath.Base(snaps[0].Path))
	assert.Contains(t, log.all()[0], "checksum")

	// Both unreadable: the newest is the one the clean close just wrote.
	for _, s := range d.j.Snapshots() {
		damage(s.Path)
	}
	_, err = New(Config{Dir: dir})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.Contains(t, err.Error(), "set aside")
	for _, s := range d.j.Snapshots() {
		assert.Contains(t, err.Error(), filepath.Base(s.Path), "the error names the snapshots set aside")
	}
}

// rewriteState rewrites the state file at path with edit applied to its
// first partition message, and a trailer whose checksum agrees: a file
// whose bytes are intact and whose content is not. It returns the byte
// offset of the partition message.
func rewriteState(t *testing.T, path string, edit func(*wirepb.StatePartition)) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var msgs [][]byte
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		require.Positive(t, k)
		msgs, b = append(msgs, b[k:k+int(n)]), b[k+int(n):]
	}
	sp := &wirepb.StatePartition{}
	require.NoError(t, proto.Unmarshal(msgs[1], sp))
	edit(sp)
	msgs[1], err = proto.Marshal(sp)
	require.NoError(t, err)
	tr := &wirepb.StateTrailer{}
	require.NoError(t, proto.Unmarshal(msgs[len(msgs)-1], tr))
	tr.Crc32C = 0
	for _, m := range msgs[:len(msgs)-1] {
		tr.Crc32C = crc32.Update(tr.Crc32C, castagnoli, m)
	}
	msgs[len(msgs)-1], err = proto.Marshal(tr)
	require.NoError(t, err)
	var out []byte
	var at int64
	for i, m := range msgs {
		if i == 1 {
			at = int64(len(out))
		}
		out = binary.AppendUvarint(out, uint64(len(m)))
		out = append(out, m...)
	}
	require.NoError(t, os.WriteFile(path, out, 0o600))
	return at
}

// What is wrong in a partition message of a state file is reported at
// that message's offset. Its fetch keys and cleared keys are checked once
// its rows are read, and the error named the offset of
// its last rows chunk instead: a reader looking there found rows.
func TestStateFileErrorNamesThePartitionsOffset(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*wirepb.StatePartition)
		want string
	}{
		{"fetch", func(sp *wirepb.StatePartition) { sp.Fetches[0].Task = "" }, "fetch key"},
		{"cleared", func(sp *wirepb.StatePartition) { sp.Cleared[0].Key = "" }, "cleared key"},
		{"kept group", func(sp *wirepb.StatePartition) { sp.KeptGroups[0].Task = "" }, "kept batches of task"},
		{"kept batch", func(sp *wirepb.StatePartition) { sp.KeptGroups[0].Batches[0].Held = -1 }, "held -1 times"},
		{"kept spec", func(sp *wirepb.StatePartition) { sp.KeptGroups[0].SamplerSpec = "no-such" }, "sampler spec"},
		{"fetch's kept batch", func(sp *wirepb.StatePartition) { sp.Fetches[1].Kept.DpRank = -1 }, "DP rank -1"},
		{"given back", func(sp *wirepb.StatePartition) {
			sp.GivenBack = append(sp.GivenBack, &wirepb.StateGivenBack{Key: []byte("g")})
		}, "given-back fetch key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, DefaultConfig())
			m := insert(t, c, "p", 5000, "x") // two rows chunks
			commitDense(t, c, "p", m.Indexes, "x")
			_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "k"})
			require.NoError(t, err)
			_, err = c.Fetch(context.Background(), keyedFetch(0, 0, 1, "k2")) // a kept batch, followed
			require.NoError(t, err)
			_, err = c.ResolveKeys("p", []string{"a"}, nil, true)
			require.NoError(t, err)
			_, err = c.ClearKeys("p", []string{"a"})
			require.NoError(t, err)
			dir := filepath.Join(t.TempDir(), "ck")
			require.NoError(t, c.Save(dir))
			at := rewriteState(t, filepath.Join(dir, stateFile), tc.edit)

			_, err = c.Load(dir)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), fmt.Sprintf("partition at byte %d:", at))
		})
	}
}

// A snapshot holds the state through the record its name gives, and
// replay starts after that record: a file whose header says it holds the
// state through another record (renamed, or copied in by hand) is not
// that snapshot. Such a file used to be adopted as named, and the records
// between the index its header gives and the one its name gives were
// skipped without a word (here, every row of "q" and "r").
func TestSnapshotWhoseIndexDisagreesWithItsNameIsSetAside(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	insert(t, c, "p", 5, "x")
	require.NoError(t, c.snapshot())
	insert(t, c, "q", 5, "x")
	insert(t, c, "r", 5, "x")
	require.NoError(t, c.WaitDurable(context.Background()))
	snaps := c.j.Snapshots()
	require.Len(t, snaps, 1)
	last := c.j.Last()
	require.Greater(t, last, snaps[0].Index)
	crash(t, c)
	misnamed := filepath.Join(dir, fmt.Sprintf("snap-%016x.pb", last))
	require.NoError(t, os.Rename(snaps[0].Path, misnamed))

	var log logLines
	d, err := New(Config{Dir: dir, Logf: log.logf})
	require.NoError(t, err, "the log holds every record: replay from the start")
	defer d.Close()
	for _, p := range []string{"p", "q", "r"} {
		require.Contains(t, d.parts, p)
		assert.Len(t, d.parts[p].sortedRows(), 5, "rows of partition %q", p)
	}
	require.Len(t, log.all(), 1)
	assert.Contains(t, log.all()[0], filepath.Base(misnamed))
	assert.Contains(t, log.all()[0], fmt.Sprintf("record %d", snaps[0].Index), "the line says what the file holds")
	assert.FileExists(t, misnamed+".misnamed")
}

// A file named as a snapshot of a record past the log's end, which holds
// an older state (renamed by hand), is set aside as misnamed: its name
// is no record's, so nothing is lost, and the start goes on with the
// state it would have had without it, as does the next (which says
// nothing of the file: the start that set it aside did). It was set
// aside as damaged, and every start then failed, saying that the records
// up to its name's were lost and naming, to remove, a file the rename
// had taken away.
func TestMisnamedSnapshotPastTheLogDoesNotStopTheStart(t *testing.T) {
	dir := t.TempDir()
	snaps := twoSnapshotsAndACrash(t, dir)
	misnamed := filepath.Join(dir, fmt.Sprintf("snap-%016x.pb", snaps[0].Index+1000))
	require.NoError(t, os.Rename(snaps[0].Path, misnamed))
	for start := range 2 {
		var log logLines
		d, err := New(Config{Dir: dir, Logf: log.logf})
		require.NoError(t, err, "start %d", start)
		for _, p := range []string{"p", "q", "r"} {
			require.Contains(t, d.parts, p)
			assert.Len(t, d.parts[p].sortedRows(), 5, "rows of partition %q", p)
		}
		require.NoError(t, d.Close())
		if start == 0 {
			require.Len(t, log.all(), 1)
			assert.Contains(t, log.all()[0], filepath.Base(misnamed)+".misnamed")
		} else {
			// The file is the controller's own, said once: not "not a
			// file of the controller's" at every start.
			assert.Empty(t, log.all())
		}
		assert.FileExists(t, misnamed+".misnamed")
	}
}

// durability.md, "Files": a file in the controller's directory that it
// does not recognise (a snapshot renamed by hand) is ignored with a line
// naming it, at every start; a start that fails for want of the records
// such a file held names it. Renamed files were ignored without a word,
// and the start failed saying only that records were missing.
func TestRenamedSnapshotsAreNamed(t *testing.T) {
	dir := t.TempDir()
	snaps := twoSnapshotsAndACrash(t, dir)
	for _, s := range snaps {
		require.NoError(t, os.Rename(s.Path, s.Path+".orig"))
	}
	var log logLines
	_, err := New(Config{Dir: dir, Logf: log.logf})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.Len(t, log.all(), 2)
	for i, s := range snaps {
		name := filepath.Base(s.Path) + ".orig"
		assert.Contains(t, err.Error(), name, "the error names the renamed snapshot")
		assert.Contains(t, log.all()[1-i], "ignoring "+name)
	}

	// The older one back: the start goes on from it, the newest still
	// ignored (and said so).
	require.NoError(t, os.Rename(snaps[1].Path+".orig", snaps[1].Path))
	log = logLines{}
	d, err := New(Config{Dir: dir, Logf: log.logf})
	require.NoError(t, err)
	defer d.Close()
	assert.Len(t, d.parts, 3)
	require.Len(t, log.all(), 1)
	assert.Contains(t, log.all()[0], "ignoring "+filepath.Base(snaps[0].Path)+".orig")
}

// durability.md, "Snapshots": a snapshot from another version of TQ is
// not damage. The start fails, naming the file and the versions, and sets
// nothing aside (falling back to the older snapshot would throw away the
// newest state for a file another build reads whole); the same files
// start once that build's snapshot is back.
func TestSnapshotOfAnotherVersionStopsTheStart(t *testing.T) {
	dir := t.TempDir()
	snaps := twoSnapshotsAndACrash(t, dir)

	newest := snaps[0].Path
	orig, err := os.ReadFile(newest)
	require.NoError(t, err)
	head, parts, rows := readStateMessages(t, newest)
	head.Version = stateVersion + 1
	writeStateFile(t, newest, head, parts, rows, nil)

	for range 2 {
		var log logLines
		_, err = New(Config{Dir: dir, Logf: log.logf})
		require.ErrorIs(t, err, engine.ErrNotSupported)
		assert.NotErrorIs(t, err, engine.ErrCorrupt)
		assert.ErrorContains(t, err, fmt.Sprintf("%s: header at byte 0: state version %d, this build reads %d", filepath.Base(newest), stateVersion+1, stateVersion))
		assert.Empty(t, log.all(), "nothing set aside")
		bad, err := filepath.Glob(filepath.Join(filepath.Dir(newest), "*.bad"))
		require.NoError(t, err)
		assert.Empty(t, bad)
		assert.FileExists(t, newest)
	}

	require.NoError(t, os.WriteFile(newest, orig, 0o600))
	d := openDurable(t, dir, Config{})
	defer d.Close()
	for _, p := range []string{"p", "q", "r"} {
		require.Contains(t, d.parts, p)
		assert.Len(t, d.parts[p].sortedRows(), 5, "rows of partition %q", p)
	}
}

// durability.md, "State files": a state file cut short at any byte, with
// any byte changed, or with bytes after its trailer, is refused as
// damaged (engine.ErrCorrupt), naming the file and a byte offset, and a
// load of it changes nothing. Every message is hit: the header, each
// partition, its rows chunks and the trailer.
func TestStateFileDamagedAnywhereIsRefused(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 3, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	putTags(t, c, "q", []string{"a", "b"}, engine.Tags{"s": "new"}, engine.Tags{"n": 2})
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "k"})
	require.NoError(t, err)
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))
	path := filepath.Join(dir, stateFile)
	orig, err := os.ReadFile(path)
	require.NoError(t, err)
	_, err = readState(bytes.NewReader(orig), int64(len(orig)))
	require.NoError(t, err, "the file as saved")

	d := newController(t, DefaultConfig())
	insert(t, d, "keep", 2, "y")
	want := stateBytes(t, d)
	refused := func(b []byte, what string) {
		t.Helper()
		_, err := readState(bytes.NewReader(b), int64(len(b)))
		require.ErrorIs(t, err, engine.ErrCorrupt, what)
		require.Regexp(t, ` at byte \d+|^an empty file`, err.Error(), what)
	}
	for n := range len(orig) {
		refused(orig[:n], fmt.Sprintf("cut to %d of %d bytes", n, len(orig)))
	}
	for i := range orig {
		for _, bit := range []byte{0x01, 0x80} {
			b := append([]byte{}, orig...)
			b[i] ^= bit
			refused(b, fmt.Sprintf("byte %d of %d ^ %#x", i, len(orig), bit))
		}
	}
	for _, extra := range [][]byte{{0}, {1, 0}, {0x80}, orig} {
		refused(append(append([]byte{}, orig...), extra...), fmt.Sprintf("%d bytes after the trailer", len(extra)))
	}

	// And through a load, which names the file and keeps the state.
	for _, b := range [][]byte{orig[:len(orig)/2], append(append([]byte{}, orig...), 0)} {
		require.NoError(t, os.WriteFile(path, b, 0o600))
		_, err = d.Load(dir)
		require.ErrorIs(t, err, engine.ErrCorrupt)
		assert.Contains(t, err.Error(), stateFile)
		assert.Equal(t, want, stateBytes(t, d), "a refused load changed the state")
	}
}

// durability.md, "State files": a reader checks everything before it
// replaces anything. Each check, met in a file whose bytes are intact (its
// checksum good), is refused as damage with an error naming what is
// wrong and where, and the load changes nothing.
func TestStateFileContentChecksNameWhatIsWrong(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "keep", 2, "x")
	want := stateBytes(t, c)
	head := func(edit func(*wirepb.StateHeader)) *wirepb.StateHeader {
		h := &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: 9, NextGen: 5, NextUnitId: 2}
		if edit != nil {
			edit(h)
		}
		return h
	}
	dense := func() []*wirepb.StateField { return []*wirepb.StateField{{Name: "x", Dtype: "float32"}} }
	cell := func() *wirepb.StateCell { return &wirepb.StateCell{Field: 0, Unit: 1, Len: 4, Shape: &wirepb.Shape{}} }
	row := func(i uint64, edit func(*wirepb.StateRow)) *wirepb.StateRow {
		r := &wirepb.StateRow{Index: i}
		if edit != nil {
			edit(r)
		}
		return r
	}
	for _, tc := range []struct {
		name  string
		head  *wirepb.StateHeader
		parts []*wirepb.StatePartition
		rows  [][]*wirepb.StateRow
		want  string
	}{
		{name: "reusable index twice", head: head(func(h *wirepb.StateHeader) { h.Reusable = []uint64{3, 3} }),
			want: "header at byte 0: reusable index 3 appears twice"},
		{name: "reusable index past next", head: head(func(h *wirepb.StateHeader) { h.Reusable = []uint64{9} }),
			want: "header at byte 0: reusable index 9 is beyond next index 9"},
		{name: "next unit id past the lost unit", head: head(func(h *wirepb.StateHeader) { h.NextUnitId = 1 << 31 }),
			want: "next unit id 2147483648 is beyond 2147483647"},
		{name: "partition twice", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1}, {Partition: "p", Gen: 2}},
			want: `partition "p" appears twice`},
		{name: "partition without an id", head: head(nil), parts: []*wirepb.StatePartition{{Gen: 1}},
			want: "partition with an empty id"},
		{name: "field twice", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: append(dense(), dense()...)}},
			want: `partition "p": field "x" appears twice`},
		{name: "field without a name", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: []*wirepb.StateField{{Dtype: "int64"}}}},
			want: `partition "p": field with an empty name`},
		{name: "task twice", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Tasks: []string{"t", "t"}}},
			want: `partition "p": bad or repeated task "t"`},
		{name: "key twice", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, KeySeq: 2}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Key, r.Seq = "a", 1 }), row(6, func(r *wirepb.StateRow) { r.Key, r.Seq = "a", 2 })}},
			want: `partition "p": key "a" appears twice`},
		{name: "key past the partition's creation number", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, KeySeq: 1}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Key, r.Seq = "a", 2 })}},
			want: `partition "p": key "a" has creation number 2, the partition's last is 1`},
		{name: "row consumed by an unknown task", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Consumed = []uint32{0} })}},
			want: `partition "p" row 5: consumed by unknown task 0`},
		{name: "cells on a reserved row", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: dense()}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Reserved, r.Cells = true, []*wirepb.StateCell{cell()} })}},
			want: `partition "p": reserved row 5 has cells`},
		{name: "opaque cell with a shape", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: []*wirepb.StateField{{Name: "b", Dtype: "bytes"}}}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Cells = []*wirepb.StateCell{cell()} })}},
			want: `partition "p" row 5: opaque field "b" has a shape`},
		{name: "cells of a field without a dtype", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: []*wirepb.StateField{{Name: "x"}}}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Cells = []*wirepb.StateCell{cell()} })}},
			want: `partition "p": field "x" has cells but no dtype`},
		{name: "a field stored twice in a row", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: dense()}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { r.Cells = []*wirepb.StateCell{cell(), cell()} })}},
			want: `partition "p" row 5: field "x" stored twice`},
		{name: "unit id out of range", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: dense()}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { c := cell(); c.Unit = 1 << 31; r.Cells = []*wirepb.StateCell{c} })}},
			want: `partition "p" row 5: unit id 2147483648 out of range`},
		{name: "a cell in a data file the state lacks", head: head(nil), parts: []*wirepb.StatePartition{{Partition: "p", Gen: 1, Fields: dense()}},
			rows: [][]*wirepb.StateRow{{row(5, func(r *wirepb.StateRow) { c := cell(); c.InFile = true; r.Cells = []*wirepb.StateCell{c} })}},
			want: `partition "p" row 5: a cell in a data file, but the state has none`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeStateFile(t, filepath.Join(dir, stateFile), tc.head, tc.parts, tc.rows, nil)
			_, err := c.Load(dir)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.ErrorContains(t, err, tc.want)
			assert.Regexp(t, `state\.pb: \w+ at byte \d+: `, err.Error())
			assert.Equal(t, want, stateBytes(t, c), "a refused load changed the state")
		})
	}
}

// twoSnapshotsAndACrash leaves in dir the log of a controller that took
// two snapshots (after partitions "p" and "q" of 5 rows each), logged "r"
// after them and crashed; it returns the snapshots, newest first.
func twoSnapshotsAndACrash(t *testing.T, dir string) []journal.Snapshot {
	t.Helper()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	insert(t, c, "p", 5, "x")
	require.NoError(t, c.snapshot())
	insert(t, c, "q", 5, "x")
	require.NoError(t, c.snapshot())
	insert(t, c, "r", 5, "x")
	require.NoError(t, c.WaitDurable(context.Background()))
	snaps := c.j.Snapshots()
	require.Len(t, snaps, 2)
	crash(t, c)
	return snaps
}
