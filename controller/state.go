package controller

// State files: the controller's whole state in one file, for snapshots of
// its log and for checkpoints (durability.md describes the format). Taking
// one has two steps: copy (under every lock, so the copy is one consistent
// view, and as little work as can be: rows are copied, nothing is encoded)
// and write (after the locks are released: encode and write the copy).
// Reading builds partitions from the file, validating everything before
// the caller replaces anything.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

const (
	stateFormat  = "tq-controller-state"
	stateVersion = 1
	// stateChunk is how many rows one StateRows message holds at most;
	// stateChunkBytes closes a chunk early when its rows are large.
	stateChunk      = 4096
	stateChunkBytes = 4 << 20
)

// maxStateMessage bounds one message of a state stream whose length is
// not known; in a file, the bytes left in it bound each message (see
// stateReader), so that whatever was written can be read back. A
// variable for tests.
var maxStateMessage uint64 = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// stateCopy is the controller's state copied under its locks.
type stateCopy struct {
	head  *wirepb.StateHeader
	parts []*partCopy
}

type partCopy struct {
	id      string
	gen     uint64
	created time.Time
	keySeq  uint64
	tasks   []string
	fields  []*wirepb.StateField
	rows    []rowCopy
	fetches []*wirepb.StateFetch
	back    []*wirepb.StateGivenBack // held fetches given back (givenBack)
	groups  []*wirepb.StateKeptGroup
	// The change feed: the last change number, the cleared keys it
	// remembers (in position order) and the position of the last one
	// forgotten.
	changeSeq uint64
	cleared   []clearedKey
	floor     changePos
	done      bool
	made      uint64
}

type rowCopy struct {
	index    uint64
	key      string
	seq      uint64
	change   uint64
	reserved bool
	made     uint64
	insPos   uint32
	insLen   uint32
	tags     engine.Tags // shared: a row's tags are replaced, never changed in place
	cells    []cellCopy
	consumed []uint64 // bitset by task slot
}

type cellCopy struct {
	slot  int
	c     cell
	shape engine.Shape // nil for opaque cells; shared like tags
}

// copyState copies the whole state. The caller holds c.mu, every
// partition's lock, the registry's and the fences' (see lockAll).
func (c *Controller) copyState() *stateCopy {
	now := time.Now()
	st := &stateCopy{head: &wirepb.StateHeader{
		Format:      stateFormat,
		Version:     stateVersion,
		ClusterId:   c.cluster,
		Epoch:       c.epoch,
		SavedUnixMs: now.UnixMilli(),
		NextGen:     c.nextGen,
	}}
	idx := c.idx.snapshot()
	st.head.NextIndex, st.head.Reusable = idx.Next, idx.Reusable
	st.head.NextUnitId, st.head.Units = c.units.copyLocked()
	st.head.Fences = c.fences.copyLocked()
	ids := make([]string, 0, len(c.parts))
	for id := range c.parts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		st.parts = append(st.parts, c.parts[id].copyState(now))
	}
	st.head.Partitions = uint64(len(st.parts))
	return st
}

// copyState copies p's state; its fetch table as it is at now.
func (p *partition) copyState(now time.Time) *partCopy {
	pc := &partCopy{id: p.id, gen: p.gen, created: p.created, keySeq: p.keySeq, tasks: slices.Clone(p.taskName), done: p.done, made: p.made,
		changeSeq: p.feed.seq, floor: p.feed.floor, cleared: make([]clearedKey, p.feed.cleared.len())}
	for i := range pc.cleared {
		pc.cleared[i] = p.feed.cleared.at(i)
	}
	cells := 0
	for _, f := range p.order {
		pc.fields = append(pc.fields, &wirepb.StateField{Name: f.name, Dtype: wire.DTypeToPB(f.dtype)})
		cells += f.produced
	}
	pc.rows = make([]rowCopy, 0, p.rows.len())
	slab := make([]cellCopy, 0, cells) // every produced cell, in one allocation
	p.rows.all(func(r *row) {
		rc := rowCopy{index: r.index, key: p.keyOf(r), seq: r.seq, change: r.change, reserved: !r.active, tags: p.tagsOf(r), consumed: p.consumedWords(r),
			made: r.made, insPos: r.insPos, insLen: r.insLen}
		start := len(slab)
		p.rows.cells(r, func(slot int, cl cell) {
			cc := cellCopy{slot: slot, c: cl}
			switch f := p.order[slot]; f.kind {
			case engine.Dense:
				cc.shape = f.shape
			case engine.Ragged:
				cc.shape = f.rowShape(r.index)
			}
			slab = append(slab, cc)
		})
		rc.cells = slab[start:len(slab):len(slab)]
		pc.rows = append(pc.rows, rc)
	})
	pc.fetches, pc.back = p.fetches.copyState(now)
	pc.groups = p.copyGroups()
	return pc
}

// stateWriter writes length-delimited messages and keeps the CRC of their
// bytes for the trailer.
type stateWriter struct {
	w   *bufio.Writer
	crc uint32
	buf []byte
	n   struct{ partitions, rows, cells uint64 }
}

func (sw *stateWriter) put(m proto.Message) error {
	b, err := proto.MarshalOptions{}.MarshalAppend(sw.buf[:0], m)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	sw.buf = b
	var pre [binary.MaxVarintLen64]byte
	if _, err := sw.w.Write(pre[:binary.PutUvarint(pre[:], uint64(len(b)))]); err != nil {
		return err
	}
	sw.crc = crc32.Update(sw.crc, castagnoli, b)
	_, err = sw.w.Write(b)
	return err
}

// write encodes the copy to w. cellFn, if set, rewrites each cell on its
// way out (a checkpoint with data points cells into its data file).
func (st *stateCopy) write(w io.Writer, cellFn func(p *partCopy, r *rowCopy, c *cellCopy, out *wirepb.StateCell) error) error {
	sw := &stateWriter{w: bufio.NewWriterSize(w, 1<<20)}
	if err := sw.put(st.head); err != nil {
		return err
	}
	for _, pc := range st.parts {
		sp := &wirepb.StatePartition{
			Partition: pc.id, Gen: pc.gen, CreatedUnixMs: pc.created.UnixMilli(), KeySeq: pc.keySeq,
			Tasks: pc.tasks, Fields: pc.fields, Rows: uint64(len(pc.rows)), Fetches: pc.fetches, GivenBack: pc.back, KeptGroups: pc.groups,
			ChangeSeq: pc.changeSeq, ClearedFloorChange: pc.floor.change, ClearedFloorSeq: pc.floor.seq,
			Done: pc.done, Made: pc.made,
		}
		if len(pc.cleared) > 0 {
			sp.Cleared = make([]*wirepb.StateCleared, len(pc.cleared))
			for i, ck := range pc.cleared {
				sp.Cleared[i] = &wirepb.StateCleared{Key: ck.key, Seq: ck.pos.seq, Change: ck.pos.change}
			}
		}
		if err := sw.put(sp); err != nil {
			return err
		}
		sw.n.partitions++
		chunk := &wirepb.StateRows{}
		size := 0
		flush := func() error {
			if len(chunk.Rows) == 0 {
				return nil
			}
			err := sw.put(chunk)
			chunk.Rows, size = chunk.Rows[:0], 0
			return err
		}
		var tags runTags
		for i := range pc.rows {
			rc := &pc.rows[i]
			sr, err := rc.toPB(pc, cellFn, &tags)
			if err != nil {
				return fmt.Errorf("partition %q row %d: %w", pc.id, rc.index, err)
			}
			sw.n.rows++
			sw.n.cells += uint64(len(sr.Cells))
			chunk.Rows = append(chunk.Rows, sr)
			size += len(sr.Key) + len(sr.Tags) + 32*len(sr.Cells) + 16
			if len(chunk.Rows) == stateChunk || size >= stateChunkBytes {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	tr := &wirepb.StateTrailer{Partitions: sw.n.partitions, Rows: sw.n.rows, Cells: sw.n.cells, Crc32C: sw.crc}
	if err := sw.put(tr); err != nil {
		return err
	}
	return sw.w.Flush()
}

func (rc *rowCopy) toPB(pc *partCopy, cellFn func(*partCopy, *rowCopy, *cellCopy, *wirepb.StateCell) error, tags *runTags) (*wirepb.StateRow, error) {
	sr := &wirepb.StateRow{Index: rc.index, Key: rc.key, Seq: rc.seq, Change: rc.change, Reserved: rc.reserved,
		Made: rc.made, InsertPos: rc.insPos, InsertLen: rc.insLen}
	if len(rc.tags) > 0 {
		b, err := tags.encode(rc.tags)
		if err != nil {
			return nil, err
		}
		sr.Tags = b
	}
	for t := range pc.tasks {
		if w := t / 64; w < len(rc.consumed) && rc.consumed[w]&(1<<(t%64)) != 0 {
			sr.Consumed = append(sr.Consumed, uint32(t))
		}
	}
	if len(rc.cells) > 0 {
		sr.Cells = make([]*wirepb.StateCell, len(rc.cells))
		for i := range rc.cells {
			cc := &rc.cells[i]
			sc := &wirepb.StateCell{
				Field: uint32(cc.slot), Unit: cc.c.unit &^ producedBit, Segment: cc.c.seg, Gen: cc.c.gen,
				Offset: cc.c.off, Len: cc.c.len,
			}
			if pc.fields[cc.slot].Dtype != wire.DTypeToPB(engine.Bytes) {
				sc.Shape = wire.ShapeToPB(cc.shape)
				if cc.shape == nil {
					sc.Shape = &wirepb.Shape{}
				}
			}
			if cellFn != nil {
				if err := cellFn(pc, rc, cc, sc); err != nil {
					return nil, err
				}
			}
			sr.Cells[i] = sc
		}
	}
	return sr, nil
}

// loadedState is a state file read back: everything the controller needs
// to take it over, validated.
type loadedState struct {
	head  *wirepb.StateHeader
	parts map[string]*partition
	// inFile, for a checkpoint with data: per partition, the cells whose
	// bytes are in the data file, to be written to storage units before
	// the state is taken over.
	inFile []fileCell
	tags   runTags
}

// runTags encodes or decodes the tags of consecutive rows that share one
// map (a batch's rows mostly do: see tagMerge) once, and keeps them one
// map when they are read back.
type runTags struct {
	m engine.Tags
	b []byte
}

func (l *runTags) encode(m engine.Tags) ([]byte, error) {
	if l.b != nil && m.Same(l.m) {
		return l.b, nil
	}
	b, err := wire.JSONToPB(m)
	if err != nil {
		return nil, err
	}
	l.m, l.b = m, b
	return b, nil
}

func (l *runTags) decode(b []byte) (engine.Tags, error) {
	if l.m != nil && bytes.Equal(b, l.b) {
		return l.m, nil
	}
	m, err := wire.JSONFromPB(b)
	if err != nil {
		return nil, err
	}
	l.m, l.b = m, b
	return m, nil
}

// fileCell is a cell whose bytes are at off in a checkpoint's data file,
// with their CRC-32C (when the header has DataCrc32C).
type fileCell struct {
	p    *partition
	r    *row
	slot int
	off  uint64
	len  uint64
	crc  uint32
}

// stateReader reads the length-delimited messages of a state file.
//
// A message's length is bounded by what is left of the file (left), not
// by a fixed size: the writer bounds no message (a header with millions
// of reusable indexes, a partition remembering 65536 long cleared keys,
// a row with large tags), and a bound it did not know would make a
// snapshot it wrote unreadable at the next start. A damaged length past
// the end of the file is refused before anything is allocated. A stream
// of unknown length (left < 0) bounds messages at maxStateMessage.
type stateReader struct {
	r    *bufio.Reader
	crc  uint32
	buf  []byte
	left int64 // bytes not yet read, or -1 when not known
	// off is the bytes read so far; at and what are the offset and kind
	// of the message read last (or being read), for errors.
	off  int64
	at   int64
	what string
}

// newStateReader reads r, of size bytes (-1 when not known).
func newStateReader(r io.Reader, size int64, bufSize int) *stateReader {
	return &stateReader{r: bufio.NewReaderSize(r, bufSize), left: size}
}

// next reads the next message, a what, into m. Its errors do not say
// where: the caller's do (sr.what, sr.at).
func (sr *stateReader) next(m proto.Message, what string) error {
	b, err := sr.raw(what)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return corrupt("decode: %s", err.Error())
	}
	return nil
}

// raw reads the next message's bytes (valid until the next read) and
// adds them to the CRC.
func (sr *stateReader) raw(what string) ([]byte, error) {
	sr.at, sr.what = sr.off, what
	n, err := binary.ReadUvarint(sr.r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, corrupt("read: %s", err.Error())
	}
	sr.off += int64(uvarintLen(n))
	if sr.left >= 0 {
		sr.left -= int64(uvarintLen(n))
		if n > uint64(max(sr.left, 0)) {
			return nil, corrupt("%d bytes, %d left in the file", n, max(sr.left, 0))
		}
		sr.left -= int64(n)
	} else if n > maxStateMessage {
		return nil, corrupt("%d bytes exceeds %d", n, maxStateMessage)
	}
	if cap(sr.buf) < int(n) {
		sr.buf = make([]byte, n)
	}
	b := sr.buf[:n]
	if _, err := io.ReadFull(sr.r, b); err != nil {
		return nil, corrupt("read: %s", err.Error())
	}
	sr.off += int64(n)
	sr.crc = crc32.Update(sr.crc, castagnoli, b)
	return b, nil
}

// checkStateSum reads a state file of size bytes message by message,
// decoding only the last (the trailer), and checks the CRC it holds
// against the bytes before it: a damaged file is refused as such before
// anything in it is believed.
func checkStateSum(r io.Reader, size int64) error {
	sr := newStateReader(r, size, 1<<20)
	var last []byte
	var before uint32 // the CRC of the messages before last
	for what := "header"; sr.left > 0; what = "message" {
		before = sr.crc
		b, err := sr.raw(what)
		if err != nil {
			return fmt.Errorf("%s at byte %d: %w", sr.what, sr.at, err)
		}
		last = b
	}
	if last == nil {
		return corrupt("an empty file")
	}
	tr := &wirepb.StateTrailer{}
	if err := proto.Unmarshal(last, tr); err != nil {
		return corrupt("decode the trailer (the last message, at byte %d): %s", sr.at, err.Error())
	}
	if tr.Crc32C != before {
		return corrupt("checksum %08x in the trailer at byte %d, the bytes before it give %08x", tr.Crc32C, sr.at, before)
	}
	return nil
}

// fits refuses a count of things (what) the rest of the file cannot
// hold, at a byte each at least. A stream of unknown length bounds
// nothing here: what a count sizes in advance is capped on its own.
func (sr *stateReader) fits(count uint64, what string) error {
	if sr.left >= 0 && count > uint64(sr.left) {
		return corrupt("%d %s claimed, more than the %d bytes left in the file can hold", count, what, sr.left)
	}
	return nil
}

// uvarintLen is the length of n as a varint.
func uvarintLen(n uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], n)
}

// readState reads and validates a whole state file of size bytes (-1
// when not known: each message is then bounded at maxStateMessage, and
// the checksum is only checked at the end). Errors say where in the file.
func readState(r io.ReadSeeker, size int64) (*loadedState, error) {
	if size >= 0 {
		if err := checkStateSum(r, size); err != nil {
			return nil, err
		}
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	sr := newStateReader(r, size, 1<<20)
	ls, err := sr.readState()
	if err != nil {
		// In the last message read, or found in what it said.
		return nil, fmt.Errorf("%s at byte %d: %w", sr.what, sr.at, err)
	}
	return ls, nil
}

// checkVersion refuses a state of another version than this build's: not
// damage, another build's file, to be read by that build.
func checkVersion(head *wirepb.StateHeader) error {
	if head.Version != stateVersion {
		return fmt.Errorf("state version %d, this build reads %d: %w", head.Version, stateVersion, engine.ErrNotSupported)
	}
	return nil
}

func (sr *stateReader) readState() (*loadedState, error) {
	head := &wirepb.StateHeader{}
	if err := sr.next(head, "header"); err != nil {
		return nil, err
	}
	if head.Format != stateFormat {
		return nil, corrupt("format %q, want %q", head.Format, stateFormat)
	}
	if err := checkVersion(head); err != nil {
		return nil, err
	}
	switch {
	case head.NextIndex > maxIndexes:
		return nil, corrupt("next index %d is beyond %d", head.NextIndex, uint64(maxIndexes))
	case head.NextUnitId > uint32(engine.LostUnit):
		return nil, corrupt("next unit id %d is beyond %d", head.NextUnitId, engine.LostUnit)
	}
	// Each partition, and each row, takes at least a byte of what is
	// left: a count the file cannot hold is damage, refused before it
	// sizes anything.
	if err := sr.fits(head.Partitions, "partitions"); err != nil {
		return nil, err
	}
	ls := &loadedState{head: head, parts: make(map[string]*partition, min(head.Partitions, 1<<16))}
	var used indexSet
	var n struct{ rows, cells uint64 }
	for range head.Partitions {
		sp := &wirepb.StatePartition{}
		if err := sr.next(sp, "partition"); err != nil {
			return nil, err
		}
		if err := sr.fits(sp.Rows, fmt.Sprintf("rows of partition %q", sp.Partition)); err != nil {
			return nil, err
		}
		at := sr.at
		p, err := newPartitionFromState(sp, head)
		if err != nil {
			return nil, err
		}
		if _, dup := ls.parts[p.id]; dup {
			return nil, corrupt("partition %q appears twice", p.id)
		}
		for got := uint64(0); got < sp.Rows; {
			chunk := &wirepb.StateRows{}
			if err := sr.next(chunk, "rows"); err != nil {
				return nil, err
			}
			if len(chunk.Rows) == 0 || got+uint64(len(chunk.Rows)) > sp.Rows {
				return nil, corrupt("partition %q: a chunk of %d rows after %d of %d", p.id, len(chunk.Rows), got, sp.Rows)
			}
			for _, srow := range chunk.Rows {
				if !used.add(srow.Index) {
					return nil, corrupt("row %d appears twice (again in partition %q)", srow.Index, p.id)
				}
				if srow.Index >= head.NextIndex {
					return nil, corrupt("row %d is beyond the allocator's next index %d", srow.Index, head.NextIndex)
				}
				if err := p.loadRow(srow, sp, ls); err != nil {
					return nil, err
				}
				n.cells += uint64(len(srow.Cells))
			}
			got += uint64(len(chunk.Rows))
			n.rows += uint64(len(chunk.Rows))
		}
		sr.at, sr.what = at, "partition" // what the rest checks
		for i, sf := range sp.Fields {
			dt, _ := wire.DTypeFromPB(sf.Dtype)
			if f := p.order[i]; f.produced > 0 && f.dtype != dt {
				return nil, corrupt("partition %q: field %q dtype disagrees with its cells", p.id, sf.Name)
			}
		}
		if err := p.loadFetches(sp.Fetches, sp.GivenBack); err != nil {
			return nil, err
		}
		if err := p.loadGroups(sp.KeptGroups); err != nil {
			return nil, err
		}
		if err := p.loadCleared(sp.Cleared); err != nil {
			return nil, err
		}
		ls.parts[p.id] = p
	}
	crc := sr.crc
	tr := &wirepb.StateTrailer{}
	if err := sr.next(tr, "trailer"); err != nil {
		return nil, err
	}
	switch {
	case tr.Crc32C != crc:
		return nil, corrupt("checksum %08x, the file's bytes give %08x", tr.Crc32C, crc)
	case tr.Partitions != head.Partitions || tr.Rows != n.rows || tr.Cells != n.cells:
		return nil, corrupt("trailer counts %d partitions, %d rows, %d cells; the file holds %d, %d, %d",
			tr.Partitions, tr.Rows, tr.Cells, head.Partitions, n.rows, n.cells)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		return nil, corrupt("bytes after the trailer")
	}
	sr.at, sr.what = 0, "header" // what the rest checks
	var seen indexSet
	for _, gi := range head.Reusable {
		if gi >= head.NextIndex {
			return nil, corrupt("reusable index %d is beyond next index %d", gi, head.NextIndex)
		}
		if used.has(gi) {
			return nil, corrupt("reusable index %d is in use by a row", gi)
		}
		if !seen.add(gi) {
			return nil, corrupt("reusable index %d appears twice", gi)
		}
	}
	return ls, nil
}

// preSizeMax bounds the maps a state file's counts size in advance.
const preSizeMax = 1 << 21

func newPartitionFromState(sp *wirepb.StatePartition, head *wirepb.StateHeader) (*partition, error) {
	if sp.Partition == "" {
		return nil, corrupt("partition with an empty id")
	}
	if sp.Gen == 0 || sp.Gen >= head.NextGen {
		return nil, corrupt("partition %q has gen %d, next gen is %d", sp.Partition, sp.Gen, head.NextGen)
	}
	p := newPartition(sp.Partition, sp.Gen)
	p.created, p.keySeq, p.done, p.made = time.UnixMilli(sp.CreatedUnixMs), sp.KeySeq, sp.Done, sp.Made
	p.feed.seq, p.feed.floor = sp.ChangeSeq, changePos{sp.ClearedFloorChange, sp.ClearedFloorSeq}
	// Sized for the keys to come (growing a map of 1M keys costs a sixth
	// of a restart), within reason for a corrupt count.
	p.keys = make(map[string]*row, min(sp.KeySeq, sp.Rows, preSizeMax))
	for _, t := range sp.Tasks {
		if _, dup := p.tasks[t]; dup || t == "" {
			return nil, corrupt("partition %q: bad or repeated task %q", sp.Partition, t)
		}
		p.taskSlot(t)
	}
	if len(sp.Fields) > maxFields {
		return nil, corrupt("partition %q: %d fields, past the limit of %d", sp.Partition, len(sp.Fields), maxFields)
	}
	for _, sf := range sp.Fields {
		if sf.Name == "" {
			return nil, corrupt("partition %q: field with an empty name", sp.Partition)
		}
		if _, dup := p.fields[sf.Name]; dup {
			return nil, corrupt("partition %q: field %q appears twice", sp.Partition, sf.Name)
		}
		if _, err := wire.DTypeFromPB(sf.Dtype); err != nil {
			return nil, corrupt("partition %q: field %q: %s", sp.Partition, sf.Name, err.Error())
		}
		f := &field{name: sf.Name, slot: len(p.order)}
		p.fields[sf.Name] = f
		p.order = append(p.order, f)
	}
	return p, nil
}

// loadRow adds a row read from a state file to p, whose header is sp.
func (p *partition) loadRow(sr *wirepb.StateRow, sp *wirepb.StatePartition, ls *loadedState) error {
	tags, err := ls.tags.decode(sr.Tags)
	if err != nil {
		return corrupt("partition %q row %d: %s", p.id, sr.Index, err.Error())
	}
	if sr.Key != "" {
		if _, dup := p.keys[sr.Key]; dup {
			return corrupt("partition %q: key %q appears twice", p.id, sr.Key)
		}
		if sr.Seq == 0 || sr.Seq > p.keySeq {
			return corrupt("partition %q: key %q has creation number %d, the partition's last is %d", p.id, sr.Key, sr.Seq, p.keySeq)
		}
		if sr.Change > p.feed.seq {
			return corrupt("partition %q: key %q has change number %d, the partition's last is %d", p.id, sr.Key, sr.Change, p.feed.seq)
		}
	}
	if _, dup := p.rows.get(sr.Index); dup {
		return corrupt("partition %q: row %d appears twice", p.id, sr.Index)
	}
	switch {
	case sr.Made == 0 && (sr.InsertPos != 0 || sr.InsertLen != 0):
		return corrupt("partition %q row %d: a place in an insert (%d of %d) but no creation number", p.id, sr.Index, sr.InsertPos, sr.InsertLen)
	case sr.Made != 0 && sr.Reserved:
		return corrupt("partition %q: reserved row %d has creation number %d", p.id, sr.Index, sr.Made)
	case sr.Made != 0 && sr.InsertPos >= sr.InsertLen:
		return corrupt("partition %q row %d: place %d in an insert of %d rows", p.id, sr.Index, sr.InsertPos, sr.InsertLen)
	case sr.Made > sp.Made:
		return corrupt("partition %q row %d has creation number %d, the partition's last is %d", p.id, sr.Index, sr.Made, sp.Made)
	case sr.Made != 0 && sr.Made <= uint64(sr.InsertPos):
		return corrupt("partition %q row %d: creation number %d at place %d of its insert", p.id, sr.Index, sr.Made, sr.InsertPos)
	case sr.Made == 0 && !sr.Reserved && sp.Made != 0:
		return corrupt("partition %q: active row %d has no creation number, the partition numbers its rows", p.id, sr.Index)
	}
	r := p.rows.add(sr.Index)
	r.seq, r.change, r.active = sr.Seq, sr.Change, !sr.Reserved
	r.made, r.insPos, r.insLen = sr.Made, sr.InsertPos, sr.InsertLen
	if r.active && r.made == 0 {
		// A file from before rows kept their insert: each is an insert
		// of one, made in global-index order, as samplers of prompt
		// groups took them then.
		r.made, r.insLen = r.index+1, 1
		p.made = max(p.made, r.made)
	}
	p.setTags(r, tags)
	if sr.Key != "" {
		p.setKey(r, sr.Key)
		p.keys[sr.Key] = r
		p.bySeq.ReplaceOrInsert(r)
	}
	if sr.Reserved {
		if len(sr.Cells) > 0 {
			return corrupt("partition %q: reserved row %d has cells", p.id, r.index)
		}
		p.reserved.ReplaceOrInsert(r.index)
	}
	for _, t := range sr.Consumed {
		if int(t) >= len(p.taskName) {
			return corrupt("partition %q row %d: consumed by unknown task %d", p.id, r.index, t)
		}
		p.setConsumed(r, int(t), true)
	}
	for _, sc := range sr.Cells {
		if int(sc.Field) >= len(p.order) {
			return corrupt("partition %q row %d: cell of unknown field %d", p.id, r.index, sc.Field)
		}
		if sc.Unit&producedBit != 0 {
			return corrupt("partition %q row %d: unit id %d out of range", p.id, r.index, sc.Unit)
		}
		f := p.order[sc.Field]
		if p.has(r, f.slot) {
			return corrupt("partition %q row %d: field %q stored twice", p.id, r.index, f.name)
		}
		dt, err := wire.DTypeFromPB(sp.Fields[sc.Field].Dtype)
		if err != nil || !dt.Valid() {
			return corrupt("partition %q: field %q has cells but no dtype", p.id, f.name)
		}
		opaque := dt == engine.Bytes
		var shape engine.Shape
		if !opaque {
			if sc.Shape == nil {
				return corrupt("partition %q row %d: field %q of dtype %v has a cell without a shape", p.id, r.index, f.name, dt)
			}
			if shape, err = wire.ShapeFromPB(sc.Shape); err != nil || shape == nil {
				return corrupt("partition %q row %d: field %q: bad shape", p.id, r.index, f.name)
			}
		} else if sc.Shape != nil {
			return corrupt("partition %q row %d: opaque field %q has a shape", p.id, r.index, f.name)
		}
		cl := cell{off: sc.Offset, len: sc.Len, seg: sc.Segment, gen: sc.Gen, unit: sc.Unit | producedBit}
		if sc.InFile {
			if !ls.head.Data {
				return corrupt("partition %q row %d: a cell in a data file, but the state has none", p.id, r.index)
			}
			ls.inFile = append(ls.inFile, fileCell{p: p, r: r, slot: f.slot, off: sc.FileOffset, len: sc.Len, crc: sc.Crc32C})
			cl = cell{len: sc.Len, unit: uint32(engine.LostUnit) | producedBit} // until its bytes are written
		}
		p.rows.set(r, f.slot, cl)
		p.recordCell(f, r.index, dt, opaque, shape)
	}
	return nil
}

// loadCleared restores the cleared keys of p's change feed.
func (p *partition) loadCleared(cleared []*wirepb.StateCleared) error {
	if len(cleared) > maxCleared {
		return corrupt("partition %q: %d cleared keys remembered, at most %d", p.id, len(cleared), maxCleared)
	}
	p.feed.cleared.buf = make([]clearedKey, 0, len(cleared))
	prev := p.feed.floor
	for _, sc := range cleared {
		pos := changePos{sc.Change, sc.Seq}
		switch {
		case sc.Key == "":
			return corrupt("partition %q: a cleared key without a name", p.id)
		case !prev.less(pos) || sc.Change > p.feed.seq || sc.Seq > p.keySeq:
			return corrupt("partition %q: cleared key %q at change %d (creation %d) is out of order or past the partition's last (%d, %d)",
				p.id, sc.Key, sc.Change, sc.Seq, p.feed.seq, p.keySeq)
		}
		p.feed.cleared.buf = append(p.feed.cleared.buf, clearedKey{key: sc.Key, pos: pos})
		prev = pos
	}
	return nil
}
