package controller

// Checkpoints. A checkpoint is a directory holding the controller's state
// in a state file (state.pb, the format of the journal's snapshots; see
// durability.md) and, for a checkpoint the server saves with data, the
// cells' bytes (data.bin). Save and Load here handle the metadata alone:
// the cells keep their storage locations, which are only meaningful while
// the same units (the same incarnations) hold them, so Load marks lost
// every cell whose unit is not the one that held it at Save. Server's
// SaveCheckpoint and LoadCheckpoint (checkpointdata.go) handle checkpoints
// with data, which a fresh cluster can load.
//
// A directory is written beside its final name, fsynced and renamed into
// place: it holds the old checkpoint or the new one, never a mix.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
	"golang.org/x/sys/unix"
)

const (
	stateFile = "state.pb"
	dataFile  = "data.bin"
)

// Save writes a checkpoint of the controller's metadata (partitions, rows,
// keys, tags, production, consumption, the index allocator, the units and
// the sampler's state) into dir. A dir that exists and holds files but no
// checkpoint is refused with [engine.ErrInvalid]: replacing it would
// delete them.
func (c *Controller) Save(dir string) error {
	if err := checkReplaceable(dir); err != nil {
		return opErr("save checkpoint", dir, err)
	}
	unlock := c.lockAll()
	err := c.closed() // a closed controller's state is no one's
	var st *stateCopy
	if err == nil {
		st = c.copyState()
		err = c.samplerState(st.head) // under the locks, as of the same moment
	}
	unlock()
	if err != nil {
		return opErr("save checkpoint", dir, err)
	}
	err = writeDirAtomic(dir, func(tmp string) error {
		return journal.WriteFileAtomic(filepath.Join(tmp, stateFile), func(w io.Writer) error { return st.write(w, nil) })
	})
	if err != nil {
		return opErr("save checkpoint", dir, err)
	}
	return nil
}

// checkReplaceable refuses a dir that Save must not replace: one that
// holds files but no checkpoint (Save moves dir aside and deletes it), or
// that is no directory (a file, a named pipe, a symbolic link that leads
// nowhere), naming it and what it is. A symbolic link to a checkpoint is
// replaced (the link, not what it names).
func checkReplaceable(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if fi, err = os.Stat(dir); err != nil {
			// A rename cannot put a directory in its place either.
			target, _ := os.Readlink(dir)
			why := "which is not there"
			if !errors.Is(err, fs.ErrNotExist) {
				why = fmt.Sprintf("which cannot be followed (%v)", err)
			}
			return fmt.Errorf("%s is a symbolic link to %s, %s; refusing to replace it: %w", dir, target, why, engine.ErrInvalid)
		}
	}
	if err != nil {
		return fmt.Errorf("inspect checkpoint directory: %w", err)
	}
	if !fi.IsDir() {
		what := "a file"
		if !fi.Mode().IsRegular() {
			what = fileKind(fi.Mode())
		}
		return fmt.Errorf("%s is %s, not a checkpoint directory; refusing to replace it: %w", dir, what, engine.ErrInvalid)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("inspect checkpoint directory: %w", err)
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("%s holds %d entries but no %s; refusing to replace it: %w", dir, len(entries), stateFile, engine.ErrInvalid)
	}
	return nil
}

// writeDirAtomic has fill write a checkpoint's files into a fresh
// temporary sibling of dir, fsyncs the directory and renames it to dir,
// exchanging it with an existing checkpoint in one step where the file
// system can (else the old one is moved aside first). fill fsyncs the
// files it writes (journal.WriteFileAtomic). On failure nothing is left behind;
// a process killed meanwhile leaves a hidden sibling that sweepTemps
// removes (or, for the old checkpoint moved aside, puts back).
func writeDirAtomic(dir string, fill func(tmp string) error) (err error) {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if err := journal.MkdirAll(parent); err != nil {
		return fmt.Errorf("create parent: %w", err)
	}
	tmp := tempSibling(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := journal.SyncDir(tmp); err != nil {
		return err
	}
	var old string
	if _, statErr := os.Stat(dir); statErr == nil {
		err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE)
		switch {
		case err == nil:
			os.RemoveAll(tmp) // now the old checkpoint
			return journal.SyncDir(parent)
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ENOTSUP):
			old = tempSibling(dir, "old")
			if err := os.Rename(dir, old); err != nil {
				return fmt.Errorf("move old checkpoint aside: %w", err)
			}
		default:
			return fmt.Errorf("exchange checkpoint: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return fmt.Errorf("rename checkpoint into place: %w", err)
	}
	if old != "" {
		os.RemoveAll(old)
	}
	return journal.SyncDir(parent)
}

// tempSibling names a hidden sibling of dir for what (a checkpoint being
// written, or one being replaced): no checkpoint name starts with a dot,
// so it is never listed nor asked for.
func tempSibling(dir, what string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+"."+what+"-"+randSuffix())
}

// movedAside matches the name tempSibling gives a checkpoint moved aside
// (what "old"); its first group is the checkpoint's name.
var movedAside = regexp.MustCompile(`^\.(.+)\.old-[0-9a-f]+$`)

// sweepTemps removes from dir what saves cut short (a killed process)
// left: tempSibling's directories. A checkpoint moved aside to be
// replaced (writeDirAtomic, where the file system cannot exchange) whose
// replacement never took its name is put back under it instead.
func sweepTemps(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, ".") {
			continue
		}
		if m := movedAside.FindStringSubmatch(n); m != nil {
			name := filepath.Join(dir, m[1])
			if _, err := os.Lstat(name); errors.Is(err, fs.ErrNotExist) && os.Rename(filepath.Join(dir, n), name) == nil {
				journal.SyncDir(dir)
				continue
			}
		}
		if strings.Contains(n, ".tmp-") || strings.Contains(n, ".old-") {
			os.RemoveAll(filepath.Join(dir, n))
		}
	}
}

// openRegular opens path for reading and returns it with its FileInfo,
// refusing anything but a regular file (followed through symbolic
// links) as damaged, naming it and what it is. Opening a named pipe
// would block until something wrote to it (a listing, or a load holding
// the checkpoint lock, hung for good), and a device or a directory has
// no size to read a state by.
func openRegular(path string) (*os.File, fs.FileInfo, error) {
	// O_NONBLOCK: an open of a named pipe returns at once; it changes
	// nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = corrupt("%s is %s, not a regular file", filepath.Base(path), fileKind(fi.Mode()))
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// fileKind says what a file that is not a regular one is.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "of type " + m.Type().String()
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, engine.ErrCorrupt)...)
}

func randSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Load replaces the controller's state with the checkpoint in dir and
// returns the locations of the cells it replaced, whose storage the caller
// frees. The whole file is decoded and validated before anything is
// replaced: a bad checkpoint (wrapping [engine.ErrCorrupt], or an
// *os.PathError for a missing one; [engine.ErrInvalid] for one saved
// with a sampler that keeps state, into a controller whose sampler keeps
// none) leaves the controller as it was. Cells
// whose storage unit is not registered under the incarnation that held
// them at Save become lost (reading them fails with [engine.ErrLost]): a
// checkpoint never serves bytes another unit (or a later run of the same
// one) wrote there. A checkpoint with data needs the server
// ([Server.LoadCheckpoint]). Fetches blocked on replaced partitions wake
// and look again. A durable controller snapshots the new state before
// Load returns.
func (c *Controller) Load(dir string) ([]engine.CellLoc, error) {
	if err := c.closed(); err != nil {
		return nil, opErr("load checkpoint", dir, err)
	}
	ls, err := readStateFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, opErr("load checkpoint", dir, err)
	}
	if ls.head.Data {
		return nil, opErr("load checkpoint", dir, fmt.Errorf("a checkpoint with data is loaded through the server: %w", engine.ErrInvalid))
	}
	c.loseForeignCells(ls)
	freed, err := c.takeOver(ls, nil)
	if err != nil {
		return nil, opErr("load checkpoint", dir, err)
	}
	return freed, nil
}

// loseForeignCells marks lost the cells of ls whose unit is not
// registered here under the incarnation the checkpoint names for it.
func (c *Controller) loseForeignCells(ls *loadedState) {
	was := make(map[uint32]uint64, len(ls.head.Units))
	for _, u := range ls.head.Units {
		was[u.UnitId] = u.Incarnation
	}
	same := make(map[uint32]bool)
	for id, inc := range was {
		same[id] = c.units.bound(engine.UnitID(id), inc)
	}
	for _, p := range ls.parts {
		p.rows.all(func(r *row) {
			p.rows.cells(r, func(slot int, cl cell) {
				if u := cl.unit &^ producedBit; u != 0 && u != uint32(engine.LostUnit) && !same[u] {
					p.rows.set(r, slot, lostCell(cl))
				}
			})
		})
	}
}

// takeOver replaces the state with ls's partitions, index allocator and
// sampler state (the units, fences and identity stay this cluster's), and
// returns the cells it replaced. Every loaded partition gets a new gen. A
// durable controller records the replacement and writes a snapshot of the
// new state before anyone sees it: every lock is held until the snapshot
// is on disk, so no change made after the load can reach the log before
// it (a load is rare; the controller pauses for as long as writing its
// state takes). If the snapshot cannot be written the journal is stopped
// ([journal.Journal.Fail]): the controller acknowledges nothing more, and
// a restart comes back with the state before the load. So does a restart
// after a process killed before the snapshot was in place.
//
// The units a load wrote the cells to (written) must still take them:
// one marked draining meanwhile may have been drained already (its mover
// listed what the state held then), and one not heard from would hold
// them lost. Then nothing is taken over, and the load may be tried again.
func (c *Controller) takeOver(ls *loadedState, written []engine.CellLoc) ([]engine.CellLoc, error) {
	var used []uint64
	for _, p := range ls.parts {
		p.rows.all(func(r *row) { used = append(used, r.index) })
	}
	unlock := c.lockAll()
	defer unlock()
	if err := c.closed(); err != nil {
		return nil, err
	}
	if err := c.units.takeLocked(written); err != nil {
		return nil, err
	}
	// Until the partitions are replaced, a failure must leave every
	// sampler as it was: the named samplers' states are checked on fresh
	// samplers first, the configured sampler's is loaded next (a
	// sampler's LoadState changes nothing when it fails), and only then
	// do the named samplers change.
	named, err := c.checkNamed(ls.head)
	if err != nil {
		return nil, err
	}
	if len(ls.head.Sampler) > 0 {
		ss, ok := c.sampler.(engine.StatefulSampler)
		if !ok {
			// Not damage: a whole file saved with another sampler.
			return nil, fmt.Errorf("the checkpoint was saved with a sampler that keeps state, and sampler %T keeps none (load it into a controller with the sampler it was saved with): %w", c.sampler, engine.ErrInvalid)
		}
		if err := ss.LoadState(ls.head.Sampler); err != nil {
			return nil, fmt.Errorf("sampler state: %w", err)
		}
	} else if cs, ok := c.sampler.(engine.CachingSampler); ok {
		for id := range c.parts {
			cs.ClearCache(id)
		}
	}
	c.installNamed(named, true, slices.Collect(maps.Keys(c.parts)))
	old := c.parts
	for _, p := range ls.parts {
		p.gen = c.nextGen
		c.nextGen++
	}
	c.setParts(ls.parts)
	c.armKept(time.Now())
	c.armHeld(time.Now())
	c.idx.restore(ls.head.NextIndex, ls.head.Reusable, used)
	c.moves.reset() // of cells the load replaced
	close(c.created)
	c.created = make(chan struct{})
	var dropped []engine.CellLoc
	for _, p := range old { // locked by lockAll
		dropped = p.removeRows(p.sortedRows(), dropped)
		p.dropped = true
		p.notify()
	}
	freed := unreferenced(dropped, ls.parts)
	if c.j == nil {
		return freed, nil
	}
	// Every row read from here on came from this record.
	replaced := c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Cluster{Cluster: &wirepb.ClusterOp{Epoch: c.epoch, Replaced: true}}})
	c.noteRemoved(replaced)
	st := c.copyState()
	pos := c.j.Pos()
	st.head.LogIndex, st.head.Starts = pos.Index, c.startsPB()
	err = c.samplerState(st.head)
	if err == nil {
		err = c.j.WriteSnapshot(pos, func(w io.Writer) error { return st.write(w, nil) })
	}
	var cleanup *journal.CleanupError
	if errors.As(err, &cleanup) {
		// The snapshot is in place: the load stands, a restart keeps it.
		if c.cfg.Logf != nil {
			c.cfg.Logf("controller: %v", err)
		}
		err = nil
	}
	if err != nil {
		// The state is replaced and cannot be put back, and without its
		// snapshot no record can follow the load's: stop the journal, so
		// that nothing more is acknowledged. Reads wait for the load's
		// record, and fail too, even if it is durable already: a restart
		// comes back with the state before the load (recover's replaced).
		err = fmt.Errorf("snapshot the loaded state (the controller acknowledges nothing more; a restart undoes the load): %w", err)
		c.j.Fail(err, replaced)
		return nil, err
	}
	return freed, nil
}

// unreferenced returns the cells of dropped that no row of parts
// references (a checkpoint loaded into the cluster that saved it names
// many of the cells it replaces).
func unreferenced(dropped []engine.CellLoc, parts map[string]*partition) []engine.CellLoc {
	if len(dropped) == 0 {
		return nil
	}
	type key struct {
		unit     engine.UnitID
		seg, gen uint32
		off      uint64
	}
	kept := make(map[key]bool)
	for _, p := range parts {
		p.rows.all(func(r *row) {
			p.rows.cells(r, func(_ int, cl cell) {
				if l := cl.loc(); l.Stored() && !l.Lost() {
					kept[key{l.Unit, l.Addr.Segment, l.Addr.Gen, l.Addr.Offset}] = true
				}
			})
		})
	}
	out := dropped[:0]
	for _, l := range dropped {
		if !kept[key{l.Unit, l.Addr.Segment, l.Addr.Gen, l.Addr.Offset}] {
			out = append(out, l)
		}
	}
	return out
}
