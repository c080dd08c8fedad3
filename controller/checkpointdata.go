package controller

// Checkpoints with data: the server saves the controller's state and the
// bytes of every cell, by name, under ServerConfig.CheckpointDir:
//
//	NAME/state.pb   the state file; each cell points into data.bin
//	                (in_file, file_offset, with the CRC-32C of its
//	                bytes) or is lost
//	NAME/data.bin   the cells' bytes, back to back
//
// Save: frees are held and reconciling paused (nothing a cell references
// when the state is copied can be freed while its bytes are read), the
// state is copied, each unit's cells are read over the data plane straight
// into data.bin mapped in memory (github.com/edsrzf/mmap-go), each cell's
// CRC-32C taken as soon as its read lands, then state.pb is written and
// the directory renamed into place. Cells of a unit that is not alive are
// recorded as lost (readers of them get engine.ErrLost already). A live
// unit that cannot be reached is waited for (Server.reach) until it
// answers or is declared dead, its cells then recorded as lost: right
// after a controller restart, units gone with the old process count as
// alive for one unit timeout. One still alive and unreachable after
// that, or a unit that fails the read, fails the save.
//
// Load: state.pb is read and validated, data.bin mapped read-only, every
// cell's bytes checked against its CRC-32C (a checkpoint saved before
// cells carried one, without StateHeader.data_crc32c, is loaded
// unchecked), and each column's cells written to the live units not
// draining as extents of at most loadExtent bytes, spread over the units
// with the most room; then the state is taken over (takeOver), so a fresh
// cluster serves the same bytes. Damage found by the check fails the load
// before anything is written or replaced.
//
// Without ServerConfig.Dial the server saves and loads metadata alone
// (Controller.Save and Load).

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
	"unicode/utf8"

	mmap "github.com/edsrzf/mmap-go"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
	"golang.org/x/sys/unix"
)

const (
	// loadExtent bounds the extents a load writes.
	loadExtent = 64 << 20
	// readBatch bounds the bytes one READ of a save asks for.
	readBatch = 64 << 20
)

var checkpointName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// CheckpointInfo describes a saved checkpoint.
type CheckpointInfo struct {
	Name  string
	Saved time.Time
	// Bytes is the size of the cells' data, Cells the cells it holds and
	// Lost those whose bytes were lost when it was saved.
	Bytes, Cells, Lost int64
	// Metadata is the JSON object saved with it, as given; nil: none.
	Metadata []byte
	// Unusable, set by [Server.Checkpoints] alone, says why a load would
	// refuse it (its state was written by a build of another state
	// version, or its state file's header is damaged: then only Name is
	// set besides, and Saved is the Unix epoch, 0 on the wire); "": it
	// loads.
	Unusable string
}

// MaxCheckpointMetadata bounds a checkpoint's user metadata.
const MaxCheckpointMetadata = 64 << 10

// maxMetadataDepth bounds how deep a checkpoint's metadata nests: far
// below the depth at which Python's json.loads, which list_checkpoints
// runs on every checkpoint's metadata, fails (RecursionError, near 1000).
const maxMetadataDepth = 256

// checkMetadata refuses user metadata that is not one JSON object of at
// most MaxCheckpointMetadata bytes, or that not every client could read
// back: invalid UTF-8 (Go's json.Unmarshal takes it, RFC 8259 and Python
// do not) or nesting past maxMetadataDepth.
func checkMetadata(b []byte) error {
	switch {
	case len(b) == 0:
		return nil
	case len(b) > MaxCheckpointMetadata:
		return fmt.Errorf("checkpoint metadata of %d bytes, at most %d: %w", len(b), MaxCheckpointMetadata, engine.ErrInvalid)
	case !utf8.Valid(b):
		return fmt.Errorf("checkpoint metadata is not valid UTF-8: %w", engine.ErrInvalid)
	}
	if d := jsonDepth(b); d > maxMetadataDepth {
		return fmt.Errorf("checkpoint metadata nests %d deep, at most %d: %w", d, maxMetadataDepth, engine.ErrInvalid)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil || obj == nil {
		why := "null"
		if err != nil {
			why = err.Error()
		}
		return fmt.Errorf("checkpoint metadata is not a JSON object (%s): %w", why, engine.ErrInvalid)
	}
	return nil
}

// jsonDepth returns how deep the arrays and objects of b nest (b is
// read as JSON; brackets inside strings do not count).
func jsonDepth(b []byte) int {
	depth, most := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString:
			switch c {
			case '\\':
				escaped = true
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			most = max(most, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return most
}

func infoOf(name string, head *wirepb.StateHeader) CheckpointInfo {
	return CheckpointInfo{Name: name, Saved: time.UnixMilli(head.SavedUnixMs), Bytes: head.DataBytes, Cells: head.Cells, Lost: head.LostCells, Metadata: head.UserMetadata}
}

func (s *Server) checkpointPath(name string) (string, error) {
	if s.cfg.CheckpointDir == "" {
		return "", fmt.Errorf("this server keeps no checkpoints (no checkpoint directory): %w", engine.ErrNotSupported)
	}
	if err := checkName(name); err != nil {
		return "", err
	}
	return filepath.Join(s.cfg.CheckpointDir, name), nil
}

func checkName(name string) error {
	if !checkpointName.MatchString(name) {
		return fmt.Errorf("checkpoint name %q: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-': %w", name, engine.ErrInvalid)
	}
	return nil
}

// CheckCheckpointName reports whether name is a well-formed checkpoint
// name: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'
// or '-'. The error names it and the rule and wraps [engine.ErrInvalid].
// It is the format check alone, for a caller that cannot look in the
// checkpoint directory (tq serve --check-config); [CheckCheckpoint] makes
// it too.
func CheckCheckpointName(name string) error { return checkName(name) }

// CheckCheckpoint reports whether checkpoint name is in dir (a
// [ServerConfig.CheckpointDir]) and this build can load it, from its
// state header alone; it is for a caller that loads one at start, to fail
// before it serves. The error names the checkpoint and dir, and wraps
// [engine.ErrInvalid] for a name that is no checkpoint name,
// [engine.ErrNotFound] for a checkpoint that is not there,
// [engine.ErrNotSupported] for one another build wrote (another state
// version) and [engine.ErrCorrupt] for a damaged header or a data file
// missing or not the size the state says (a copy cut short). A
// checkpoint it passes may still fail to load (damage past the header, or
// in the data file's bytes).
func CheckCheckpoint(dir, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("checkpoint in %s: %w", dir, err)
	}
	head, err := readStateHeader(filepath.Join(dir, name, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = fmt.Errorf("no checkpoint %q in %s: %w: %w", name, dir, engine.ErrNotFound, err)
	case err != nil:
		err = fmt.Errorf("checkpoint %q in %s: %w", name, dir, err)
	default:
		if err = checkLoadable(filepath.Join(dir, name), head); err != nil {
			err = fmt.Errorf("checkpoint %q in %s: %w", name, dir, err)
		}
	}
	return err
}

// SaveCheckpoint saves the controller's state and every cell's bytes as
// checkpoint name (see the file comment), with metadata (a JSON object,
// or nil) kept beside them, replacing a checkpoint of that name
// atomically (one that is a symbolic link to a checkpoint elsewhere is
// replaced by the new checkpoint's directory; what the link named stays
// as it was). It returns what it saved.
//
// A storage unit that holds cells, counts as alive and cannot be reached
// (right after a controller restart, one that went with the old process)
// is waited for, at most the unit timeout ([Config.UnitTimeout]) and a
// second, until it answers or is declared dead; the cells of a dead unit
// are saved as lost. One that still heartbeats but cannot be reached
// then fails the save with an error naming it that wraps
// [engine.ErrUnavailable]; the end of ctx ends the wait, with its error.
func (s *Server) SaveCheckpoint(ctx context.Context, name string, metadata []byte) (CheckpointInfo, error) {
	dir, err := s.checkpointPath(name)
	if err == nil {
		err = checkMetadata(metadata)
	}
	if err == nil {
		var info CheckpointInfo
		if info, err = s.save(ctx, name, dir, metadata); err == nil {
			return info, nil
		}
	}
	return CheckpointInfo{}, opErr("save checkpoint", name, err)
}

// cellRead is a cell to read at save: its range on the unit, and its
// place in data.bin (an index into the save's spots).
type cellRead struct {
	addr engine.RemoteAddr
	spot int
}

// fileSpot is where a saved cell's bytes are in data.bin, and their
// CRC-32C.
type fileSpot struct {
	off uint64
	crc uint32
}

func (s *Server) save(ctx context.Context, name, dir string, metadata []byte) (CheckpointInfo, error) {
	s.ckpt.Lock()
	defer s.ckpt.Unlock()
	if err := checkReplaceable(dir); err != nil {
		return CheckpointInfo{}, err
	}
	release := s.frees.hold()
	defer release()
	releaseLocal := s.c.local.hold()
	defer releaseLocal()
	s.c.pins.Lock()
	defer s.c.pins.Unlock()

	unlock := s.c.lockAll()
	err := s.c.closed()
	var st *stateCopy
	if err == nil {
		st = s.c.copyState()
		err = s.c.samplerState(st.head) // under the locks, as of the same moment
	}
	unlock()
	if err != nil {
		return CheckpointInfo{}, err
	}
	withData := s.cfg.Dial != nil
	st.head.Data = withData
	st.head.UserMetadata = metadata

	alive := map[engine.UnitID]engine.UnitInfo{}
	for _, u := range s.c.units.Units() {
		if u.Alive {
			alive[u.ID] = u
		}
	}
	// Reach every live unit that holds cells first: one that cannot be
	// reached is waited for until it answers or is declared dead.
	var conns map[engine.UnitID]engine.DataConn
	if withData {
		held := map[engine.UnitID]bool{}
		for _, pc := range st.parts {
			for i := range pc.rows {
				for _, cc := range pc.rows[i].cells {
					if u := engine.UnitID(cc.c.unit &^ producedBit); u != 0 {
						if _, ok := alive[u]; ok {
							held[u] = true
						}
					}
				}
			}
		}
		if conns, err = s.reach(ctx, alive, held); err != nil {
			return CheckpointInfo{}, err
		}
		defer func() {
			for _, dc := range conns {
				dc.Close()
			}
		}()
	}

	// Lay data.bin out: every stored cell of a live unit, in state order.
	spotOf := map[*cellCopy]int{}
	var spots []fileSpot
	lost := map[*cellCopy]bool{}
	byUnit := map[engine.UnitID][]cellRead{}
	var size uint64
	var cells, lostN int64
	for _, pc := range st.parts {
		for i := range pc.rows {
			rc := &pc.rows[i]
			for k := range rc.cells {
				cc := &rc.cells[k]
				cells++
				if !withData {
					continue
				}
				u := engine.UnitID(cc.c.unit &^ producedBit)
				if u == 0 {
					continue // produced with no bytes stored: saved as it is
				}
				if _, ok := alive[u]; !ok {
					lost[cc] = true
					lostN++
					continue
				}
				spotOf[cc] = len(spots)
				byUnit[u] = append(byUnit[u], cellRead{addr: engine.RemoteAddr{Segment: cc.c.seg, Gen: cc.c.gen, Offset: cc.c.off, Len: cc.c.len}, spot: len(spots)})
				spots = append(spots, fileSpot{off: size})
				size += cc.c.len
			}
		}
	}
	st.head.DataBytes, st.head.Cells, st.head.LostCells = int64(size), cells, lostN
	st.head.DataCrc32C = withData
	err = writeDirAtomic(dir, func(tmp string) error {
		if withData {
			err := withMappedFile(filepath.Join(tmp, dataFile), int64(size), func(m []byte) error {
				for id, refs := range byUnit {
					if err := readCells(ctx, id, conns[id], refs, spots, m); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return journal.WriteFileAtomic(filepath.Join(tmp, stateFile), func(w io.Writer) error {
			return st.write(w, func(_ *partCopy, _ *rowCopy, cc *cellCopy, out *wirepb.StateCell) error {
				if !withData || cc.c.unit&^producedBit == 0 {
					return nil
				}
				out.Unit, out.Segment, out.Gen, out.Offset = uint32(engine.LostUnit), 0, 0, 0
				if !lost[cc] {
					sp := spots[spotOf[cc]]
					out.InFile, out.FileOffset, out.Crc32C = true, sp.off, sp.crc
				}
				return nil
			})
		})
	})
	if err != nil {
		return CheckpointInfo{}, err
	}
	return CheckpointInfo{Name: name, Saved: time.UnixMilli(st.head.SavedUnixMs), Bytes: int64(size), Cells: cells, Lost: lostN, Metadata: metadata}, nil
}

// reachMargin is how long past the unit timeout a save waits for a unit
// it cannot reach before it fails (see [Server.reach]).
const reachMargin = time.Second

// reach dials the data plane of each unit of held (all in alive) and
// returns the connections. A unit that cannot be reached is dialled
// again until it answers or the registry no longer counts it alive (no
// heartbeat for the unit timeout): right after a controller restart the
// units that went with the old process count as alive for one timeout,
// and without the wait a save would fail or succeed by when it ran. A
// unit found dead is dropped from alive, so that its cells are saved as
// lost, as those of a unit dead when the save began. Each dial is
// bounded by a unit timeout and reachMargin (a host that went down may
// drop the connection's packets rather than refuse it: its dial would
// fail only at the kernel's connect timeout). One still alive and
// unreachable a unit timeout and reachMargin after the start of the
// first failed dial (it heartbeats, but this host cannot reach its data
// plane) fails the save with an error naming it that wraps
// [engine.ErrUnavailable] and the dial's error; so does the end of ctx
// or of the server, with their cause.
func (s *Server) reach(ctx context.Context, alive map[engine.UnitID]engine.UnitInfo, held map[engine.UnitID]bool) (conns map[engine.UnitID]engine.DataConn, err error) {
	conns = map[engine.UnitID]engine.DataConn{}
	defer func() {
		if err != nil {
			for _, dc := range conns {
				dc.Close()
			}
			conns = nil
		}
	}()
	timeout := s.c.units.Timeout()
	retry := min(max(timeout/20, 10*time.Millisecond), 250*time.Millisecond)
	var deadline time.Time // one for all units: set at the first failed dial
	for _, id := range slices.Sorted(maps.Keys(held)) {
		u := alive[id]
		for {
			// A dial of a host that drops what is sent to it (one that
			// went down) fails only at the kernel's connect timeout,
			// minutes: each is bounded by what the wait is at first.
			start := time.Now()
			dctx, cancel := context.WithDeadline(ctx, start.Add(timeout+reachMargin))
			stop := context.AfterFunc(s.stop, cancel)
			dc, err := s.cfg.Dial(dctx, u)
			timedOut := dctx.Err() != nil && ctx.Err() == nil && s.stop.Err() == nil
			stop()
			cancel()
			if err == nil {
				conns[id] = dc
				break
			}
			if timedOut && errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no answer from %v in %v", u.Addrs, time.Since(start).Round(time.Millisecond))
			}
			ended := func(c context.Context) error {
				return fmt.Errorf("wait for storage unit %d (%s), unreachable (%w) and not yet declared dead: %w", id, u.Name, err, context.Cause(c))
			}
			switch {
			case ctx.Err() != nil:
				return nil, ended(ctx)
			case s.stop.Err() != nil:
				return nil, ended(s.stop)
			}
			now := time.Now()
			if deadline.IsZero() {
				// From the first failed dial's start: a unit not heard
				// from since is declared dead a timeout after it.
				deadline = start.Add(timeout + reachMargin)
			}
			if !s.c.units.Alive(id) {
				delete(alive, id) // its cells are saved lost
				break
			}
			if !now.Before(deadline) {
				return nil, fmt.Errorf("storage unit %d (%s) still heartbeats but its data plane cannot be reached from the controller's host (its cells are not lost; check that this host reaches its addresses %v): %w: %w",
					id, u.Name, u.Addrs, engine.ErrUnavailable, err)
			}
			t := time.NewTimer(retry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ended(ctx)
			case <-s.stop.Done():
				t.Stop()
				return nil, ended(s.stop)
			}
		}
	}
	return conns, nil
}

// readCells reads unit id's cells (over dc) into m (data.bin mapped) at
// their spots, and records each cell's CRC-32C there as soon as its bytes
// are in (while they are still in the cache: a second pass over data.bin
// would read it all again). Cells that lie back to back both in one
// extent and in the file are read as one range.
func readCells(ctx context.Context, id engine.UnitID, dc engine.DataConn, refs []cellRead, spots []fileSpot, m []byte) error {
	var ranges []engine.RemoteAddr
	var offs []uint64
	var batch uint64
	first := 0 // refs[first:] are the cells of ranges
	flush := func(end int) error {
		if len(ranges) == 0 {
			return nil
		}
		dst := make([][]byte, len(ranges))
		for i, r := range ranges {
			dst[i] = m[offs[i] : offs[i]+r.Len]
		}
		if err := dc.Read(ctx, ranges, dst); err != nil {
			return fmt.Errorf("read cells of storage unit %d: %w", id, err)
		}
		for _, c := range refs[first:end] {
			sp := &spots[c.spot]
			sp.crc = crc32.Checksum(m[sp.off:sp.off+c.addr.Len], castagnoli)
		}
		ranges, offs, batch, first = ranges[:0], offs[:0], 0, end
		return nil
	}
	for i, c := range refs {
		if c.addr.Len == 0 {
			continue
		}
		off := spots[c.spot].off
		if k := len(ranges) - 1; k >= 0 {
			last := &ranges[k]
			if last.Segment == c.addr.Segment && last.Gen == c.addr.Gen && last.Offset+last.Len == c.addr.Offset && offs[k]+last.Len == off {
				last.Len += c.addr.Len
				batch += c.addr.Len
				continue
			}
		}
		if batch >= readBatch || len(ranges) >= 1<<16 {
			if err := flush(i); err != nil {
				return err
			}
		}
		ranges = append(ranges, c.addr)
		offs = append(offs, off)
		batch += c.addr.Len
	}
	return flush(len(refs))
}

// withMappedFile creates path with size bytes (allocated on disk, so that
// a disk without room is an error, ENOSPC, not a fault), maps it
// read-write, calls fn with the mapping, and flushes and fsyncs what fn
// wrote.
func withMappedFile(path string, size int64, fn func([]byte) error) (err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Base(path), err)
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	if size > 0 {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("size %s: %w", filepath.Base(path), err)
		}
		// Its blocks are allocated now: a page of a hole the disk has no
		// room for would fault (SIGBUS) when fn writes it, killing the
		// process. A file system that cannot allocate ahead is written
		// as before.
		if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("allocate %d bytes for %s: %w", size, filepath.Base(path), err)
		}
		m, err := mmap.Map(f, mmap.RDWR, 0)
		if err != nil {
			return fmt.Errorf("map %s: %w", filepath.Base(path), err)
		}
		ferr := fn(m)
		if ferr == nil {
			ferr = m.Flush()
		}
		if err := errors.Join(ferr, m.Unmap()); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Base(path), err)
	}
	return nil
}

// LoadCheckpoint replaces the controller's state with checkpoint name: a
// checkpoint with data has its cells written to the live storage units
// first, so the cluster serves the saved bytes. Its cells' bytes are
// checked against their CRC-32C before any is written: a damaged data.bin
// fails with an error wrapping [engine.ErrCorrupt] that names the cell,
// and changes nothing (a checkpoint saved before cells carried checksums
// is loaded unchecked). One without data (or a server without
// ServerConfig.Dial) keeps the locations of cells whose unit is still the
// same incarnation and marks the others lost. The cells the state held
// before are freed; a load that fails before it takes the state over
// leaves it as it was and frees the extents it wrote instead.
func (s *Server) LoadCheckpoint(ctx context.Context, name string) error {
	_, freed, err := s.loadCheckpointFreed(ctx, name)
	if derr := s.durable(ctx, &effects{freed: freed}); err == nil {
		err = derr
	}
	return err
}

// loadCheckpointFreed loads checkpoint name and returns what it loaded
// and the cells to free: those the state held before, or, when the load
// failed, the extents it wrote to the units.
func (s *Server) loadCheckpointFreed(ctx context.Context, name string) (CheckpointInfo, []engine.CellLoc, error) {
	dir, err := s.checkpointPath(name)
	var freed []engine.CellLoc
	if err == nil {
		var head *wirepb.StateHeader
		if freed, err = s.load(ctx, dir, &head); err == nil {
			return infoOf(name, head), freed, nil
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("no checkpoint %q: %w: %w", name, engine.ErrNotFound, err)
	}
	return CheckpointInfo{}, freed, opErr("load checkpoint", name, err)
}

// load loads the checkpoint in dir, and sets *head to its state's header.
// It returns the cells to free: on success those the state held before;
// on failure the extents it wrote to the units, which nothing references.
func (s *Server) load(ctx context.Context, dir string, head **wirepb.StateHeader) ([]engine.CellLoc, error) {
	s.ckpt.Lock()
	defer s.ckpt.Unlock()
	ls, err := readStateFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	*head = ls.head
	if !ls.head.Data {
		s.c.loseForeignCells(ls)
		return s.c.takeOver(ls, nil)
	}
	if s.cfg.Dial == nil {
		return nil, fmt.Errorf("a checkpoint with data needs a server that reaches its storage units: %w", engine.ErrNotSupported)
	}
	// The extents written below are referenced by nothing until the state
	// is taken over: no reconcile may reclaim them meanwhile.
	s.c.pins.Lock()
	defer s.c.pins.Unlock()
	f, fi, err := openDataFile(dir, ls.head)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var m mmap.MMap
	if fi.Size() > 0 {
		if m, err = mmap.Map(f, mmap.RDONLY, 0); err != nil {
			return nil, fmt.Errorf("map %s: %w", dataFile, err)
		}
		defer m.Unmap()
	}
	for _, fc := range ls.inFile {
		if fc.off > uint64(len(m)) || fc.len > uint64(len(m))-fc.off {
			return nil, corrupt("the cell at byte %d (%d bytes) of partition %q, field %q, row %d is outside %s (%d bytes)",
				fc.off, fc.len, fc.p.id, fc.p.order[fc.slot].name, fc.r.index, dataFile, len(m))
		}
	}
	// Every cell's bytes are checked before any is written: a damaged
	// data.bin fails the load with the units and the state as they were.
	// A checkpoint saved before cells carried checksums is loaded
	// unchecked.
	if ls.head.DataCrc32C {
		for _, fc := range ls.inFile {
			if got := crc32.Checksum(m[fc.off:fc.off+fc.len], castagnoli); got != fc.crc {
				return nil, corrupt("%s: the cell at byte %d (%d bytes) of partition %q, field %q, row %d: checksum %08x, its bytes give %08x",
					dataFile, fc.off, fc.len, fc.p.id, fc.p.order[fc.slot].name, fc.r.index, fc.crc, got)
			}
		}
	}
	written, err := s.place(ctx, ls.inFile, m)
	if err != nil {
		return written, err
	}
	freed, err := s.c.takeOver(ls, written)
	if err != nil {
		if s.c.failed() {
			// The state was taken over and its snapshot failed: the
			// loaded cells name the extents, and no frees go out any
			// more (a restart undoes the load, and the units' reconcile
			// frees them then).
			return nil, err
		}
		return written, err
	}
	return freed, nil
}

// place writes the cells' bytes (in m) to the live storage units not
// draining and points each cell at its new location. A column's cells
// (one field of one partition, in row order) go out together, cut into
// extents of at most loadExtent bytes, each to the unit with the most
// room left. It returns the extents it wrote, on failure too: the caller
// frees them unless the state takes the cells over.
func (s *Server) place(ctx context.Context, cells []fileCell, m []byte) (written []engine.CellLoc, err error) {
	type target struct {
		u    engine.UnitInfo
		dc   engine.DataConn
		room int64
	}
	var targets []*target
	defer func() {
		for _, t := range targets {
			if t.dc != nil {
				t.dc.Close()
			}
		}
	}()
	for _, u := range s.c.units.Units() {
		// Not onto a draining unit: its drain has finished, or moves
		// what it lists; cells loaded behind it would stay there.
		if u.Alive && !u.Draining {
			targets = append(targets, &target{u: u, room: u.Capacity - u.Used})
		}
	}
	if len(targets) == 0 && len(cells) > 0 {
		return nil, fmt.Errorf("no live storage unit that is not draining to load %d cells into: %w", len(cells), engine.ErrUnavailable)
	}
	// Columns stay together: cells of one (partition, field) in row order.
	slices.SortStableFunc(cells, func(a, b fileCell) int {
		return cmp.Or(cmp.Compare(a.p.id, b.p.id), cmp.Compare(a.slot, b.slot), cmp.Compare(a.r.index, b.r.index))
	})
	for start := 0; start < len(cells); {
		end, size := start, uint64(0)
		for end < len(cells) && cells[end].p == cells[start].p && cells[end].slot == cells[start].slot &&
			(end == start || size+cells[end].len <= loadExtent) {
			size += cells[end].len
			end++
		}
		slices.SortFunc(targets, func(a, b *target) int { return cmp.Compare(b.room, a.room) })
		t := targets[0]
		if t.dc == nil {
			dc, err := s.cfg.Dial(ctx, t.u)
			if err != nil {
				// Gone since it last reported (or not back yet after a
				// controller restart): load into the others.
				if targets = targets[1:]; len(targets) == 0 {
					return written, fmt.Errorf("no storage unit reachable to load cells into; the last: %d: %w", t.u.ID, err)
				}
				continue
			}
			t.dc = dc
		}
		pieces := make([][]byte, 0, end-start)
		for _, c := range cells[start:end] {
			pieces = append(pieces, m[c.off:c.off+c.len])
		}
		addrs, err := t.dc.Write(ctx, [][][]byte{pieces})
		if err != nil {
			return written, fmt.Errorf("write %d cells to storage unit %d: %w", end-start, t.u.ID, err)
		}
		a := addrs[0]
		written = append(written, engine.CellLoc{Unit: t.u.ID, Addr: engine.RemoteAddr{Segment: a.Segment, Gen: a.Gen, Offset: a.Offset, Len: size}})
		off := a.Offset
		for _, c := range cells[start:end] {
			c.p.rows.set(c.r, c.slot, cell{off: off, len: c.len, seg: a.Segment, gen: a.Gen, unit: uint32(t.u.ID) | producedBit})
			off += c.len
		}
		t.room -= int64(size)
		start = end
	}
	return written, nil
}

// testHookListing, when set (by tests only), runs as a listing of the
// checkpoints starts: a slow directory.
var testHookListing func()

// maxCheckpointsPage bounds the entries of one CHECKPOINTS reply.
const maxCheckpointsPage = 1000

// checkpointsPageBytes bounds the encoded entries of one CHECKPOINTS
// reply, far below wire.MaxBodyLen: a checkpoint's metadata alone may
// take 64 KiB. A variable: tests lower it.
var checkpointsPageBytes = 16 << 20

// Checkpoints lists the saved checkpoints, by name. It reads the
// checkpoint directory and every checkpoint's state header: disk I/O,
// which CHECKPOINTS runs on a goroutine of its own.
func (s *Server) Checkpoints() ([]CheckpointInfo, error) {
	list, _, err := s.checkpointsPage("", 0, 0)
	return list, err
}

// checkpointsPage lists the checkpoints named after after, by name: at
// most limit of them, whose wire encodings (CheckpointInfo) take at most
// maxBytes together (at least one is listed); 0: no bound. next is the
// last name listed when more follow, else "".
func (s *Server) checkpointsPage(after string, limit, maxBytes int) (list []CheckpointInfo, next string, err error) {
	if s.cfg.CheckpointDir == "" {
		return nil, "", opErr("list checkpoints", "", fmt.Errorf("this server keeps no checkpoints (no checkpoint directory): %w", engine.ErrNotSupported))
	}
	if testHookListing != nil {
		testHookListing()
	}
	entries, err := os.ReadDir(s.cfg.CheckpointDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", opErr("list checkpoints", "", err)
	}
	var out []CheckpointInfo
	size := 0
	for _, e := range entries { // sorted by name
		if !checkpointName.MatchString(e.Name()) || e.Name() <= after || !isDirEntry(s.cfg.CheckpointDir, e) {
			continue
		}
		head, err := readStateHeader(filepath.Join(s.cfg.CheckpointDir, e.Name(), stateFile))
		var ci CheckpointInfo
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // no state file: not a checkpoint
		case err != nil:
			// A damaged one (a copy cut short) is listed, with why a
			// load refuses it, not taken for missing.
			ci = CheckpointInfo{Name: e.Name(), Saved: time.UnixMilli(0), Unusable: fmt.Sprintf("%s: %v", stateFile, err)}
		default:
			ci = infoOf(e.Name(), head)
			if err := checkLoadable(filepath.Join(s.cfg.CheckpointDir, e.Name()), head); err != nil {
				ci.Unusable = err.Error()
			}
		}
		n := proto.Size(ci.pb()) + 8 // with its tag and length
		if len(out) > 0 && (limit > 0 && len(out) >= limit || maxBytes > 0 && size+n > maxBytes) {
			return out, out[len(out)-1].Name, nil
		}
		out = append(out, ci)
		size += n
	}
	return out, "", nil
}

// isDirEntry reports whether e, an entry of dir, is a directory or a
// symbolic link to one: a checkpoint moved elsewhere and linked to is
// listed, as a load finds it.
func isDirEntry(dir string, e fs.DirEntry) bool {
	if e.Type()&fs.ModeSymlink == 0 {
		return e.IsDir()
	}
	fi, err := os.Stat(filepath.Join(dir, e.Name()))
	return err == nil && fi.IsDir()
}

// openDataFile opens the data file of the checkpoint in dir whose state
// header is head (one with data), failing as damaged when it is missing
// or is not the size the state says (a copy cut short): the checkpoint is
// there (its state was read), so not a missing one (see
// loadCheckpointFreed).
func openDataFile(dir string, head *wirepb.StateHeader) (*os.File, fs.FileInfo, error) {
	f, fi, err := openRegular(filepath.Join(dir, dataFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, corrupt("the state has data (%d bytes) but there is no %s", head.DataBytes, dataFile)
	}
	if err != nil {
		return nil, nil, err
	}
	if fi.Size() != head.DataBytes {
		f.Close()
		return nil, nil, corrupt("%s holds %d bytes, the state says %d", dataFile, fi.Size(), head.DataBytes)
	}
	return f, fi, nil
}

// checkLoadable reports, from the state header of the checkpoint in dir
// and the size of its data file alone, whether this build can load it:
// damage past the header, and in the data file's bytes, shows at load.
func checkLoadable(dir string, head *wirepb.StateHeader) error {
	if err := checkVersion(head); err != nil || !head.Data {
		return err
	}
	f, _, err := openDataFile(dir, head)
	if err == nil {
		f.Close()
	}
	return err
}

// readStateHeader reads the first message of a state file.
func readStateHeader(path string) (*wirepb.StateHeader, error) {
	f, st, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sr := newStateReader(f, st.Size(), 64<<10)
	head := &wirepb.StateHeader{}
	if err := sr.next(head, "header"); err != nil {
		return nil, err
	}
	if head.Format != stateFormat {
		return nil, corrupt("format %q", head.Format)
	}
	return head, nil
}
