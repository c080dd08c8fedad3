// Package journal is the controller's write-ahead log and its snapshots.
//
// Records are appended in memory, in the order the caller's changes
// happened (the controller appends under the lock that guards the change),
// and numbered from 1. One goroutine writes them to the log in groups: every
// record that arrived while the previous write and fsync ran goes out in the
// next one, so concurrent requests share an fsync (group commit). A caller
// that must not answer before its change is durable waits for its record's
// index ([Journal.Wait]).
//
// The log is a Pebble database (github.com/cockroachdb/pebble, the storage
// engine of CockroachDB) holding record i under the 8-byte big-endian key
// i: Pebble's write-ahead log gives checksummed records, recovery of a torn
// tail after a crash, and space reclaimed after a range deletion, none of
// which this package implements itself. Its write-ahead files say how far
// they were synced, so damage before that point fails [Open] rather than
// reading as a torn tail; for damage in a file's last block, which Pebble
// cannot tell from one, DIR/acked remembers the last record acknowledged
// and Open refuses a log that ends before it. Snapshots are files the caller
// writes (the controller's state file format): after snapshot S, records
// up to the snapshot before S are deleted, so the log stays about as large
// as two snapshots' worth of changes, and a newest snapshot that turns out
// unreadable still has its predecessor and every record since.
//
//	DIR/log/               the Pebble database of records
//	DIR/acked              the last record acknowledged durable (not for FsyncNever)
//	DIR/snap-<index>.pb    a snapshot holding every record up to index
//
// A Journal is safe for concurrent use.
package journal

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	crdberrors "github.com/cockroachdb/errors"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/record"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"

	"github.com/tqgo/tq/engine"
)

// Fsync says when records reach the disk.
type Fsync int

const (
	// FsyncBatch writes the records that arrived while the previous write
	// ran in one write and one fsync; a waiter returns once its record is
	// on disk. Nothing acknowledged is lost, even in a power cut. The
	// default.
	FsyncBatch Fsync = iota
	// FsyncAlways writes and fsyncs each record on its own, in order: the
	// slowest mode, for comparison and for disks whose cache lies about
	// grouped flushes.
	FsyncAlways
	// FsyncNever hands records to the operating system without an fsync: a
	// crashed process loses nothing the kernel already has, a crashed
	// machine may lose the last moments.
	FsyncNever
)

var fsyncNames = []string{FsyncBatch: "batch", FsyncAlways: "always", FsyncNever: "never"}

func (f Fsync) String() string {
	if f >= 0 && int(f) < len(fsyncNames) {
		return fsyncNames[f]
	}
	return "fsync(" + strconv.Itoa(int(f)) + ")"
}

// ParseFsync reads "batch", "always" or "never".
func ParseFsync(s string) (Fsync, error) {
	for f, n := range fsyncNames {
		if s == n {
			return Fsync(f), nil
		}
	}
	return 0, fmt.Errorf("fsync mode %q (want batch, always or never): %w", s, engine.ErrInvalid)
}

// Config configures [Open].
type Config struct {
	// Dir holds the log and the snapshots; it is created (mode 0700) if
	// needed.
	Dir   string
	Fsync Fsync
	// OnWrite, if set, runs after each group of records is written (and,
	// unless FsyncNever, synced) with the group's write time and size:
	// metrics. It runs on the journal's writer and must not block.
	OnWrite func(d time.Duration, records int)
	// Logf, if set, receives what the journal found at Open that did not
	// stop it: a log that ended in a torn write (see [Open]).
	Logf func(format string, args ...any)
}

// ErrFailed reports a journal that could not write a record. The records
// after it cannot be made durable; the controller must stop acknowledging
// changes (a restart recovers what reached the disk). A failed commit or
// log sync inside Pebble does not get here: Pebble takes it as fatal and
// the logger's Fatalf exits the process (status 2), which acknowledges
// nothing more either.
var ErrFailed = errors.New("journal: write failed")

// Journal is an open log with its snapshots. See the package comment.
type Journal struct {
	cfg   Config
	db    *pebble.DB
	acked *os.File // the mark of acknowledged records (ackedFile); nil for FsyncNever

	snapMu sync.Mutex // held while a snapshot is written

	mu       sync.Mutex
	pending  [][]byte // appended, not written; pending[0] is record written+1
	written  uint64   // handed to Pebble
	err      error    // sticky write failure (wraps ErrFailed)
	wake     chan struct{}
	closed   bool
	snaps    []Snapshot // newest first: the newest and the one before it
	setAside []Snapshot // unreadable snapshots renamed .bad, newest first
	// reach is the newest snapshot at Open, set aside or not: a replay
	// from an older one must get to its index (see Replay).
	reach    Snapshot
	ignored  []string // files in Dir the journal does not recognise, by name
	misnamed []string // snapshots set aside as misnamed, by name (not read)
	appended int64    // bytes of every record appended since Open
	snapAt   int64    // appended when the newest snapshot's state was taken

	last    atomic.Uint64 // index of the last appended record
	durable atomic.Uint64 // index of the last durable record
	// undone is the first record a restart undoes (see Fail): waiting for
	// it or a later one fails even once it is durable. MaxUint64: none.
	undone atomic.Uint64
	groups atomic.Int64 // writes (each with its fsync) since Open

	kick       chan struct{} // tells the writer there is work (buffered, 1)
	done       chan struct{}
	writerDone chan struct{}
}

// Snapshot names a snapshot file holding the state through record Index.
type Snapshot struct {
	Index uint64
	Path  string
}

// Pos is a position in the log: the last record appended and the bytes
// appended up to it since the journal opened, counting the records it
// replayed then.
type Pos struct {
	Index uint64
	Bytes int64
}

const snapPrefix, snapSuffix, badSuffix = "snap-", ".pb", ".bad"

// misnamedSuffix marks a file named as a snapshot that holds the state
// through another record (see [Journal.SetAsideMisnamed]): not read again.
const misnamedSuffix = ".misnamed"

// keepSetAside is how many snapshots set aside (.bad) are kept: the
// newest; older ones are removed, so that a controller that keeps
// failing to read its snapshots does not fill the disk with them.
const keepSetAside = 3

// Open opens the journal in cfg.Dir, creating it if needed, and starts its
// writer; [Journal.Close] stops it. Read the recovered state with
// [Journal.Snapshots] and [Journal.Replay] before appending. A damaged log,
// or one that lost records it acknowledged, is an error wrapping
// [engine.ErrCorrupt] that names the file.
func Open(cfg Config) (*Journal, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("journal without a directory: %w", engine.ErrInvalid)
	}
	if cfg.Fsync < FsyncBatch || cfg.Fsync > FsyncNever {
		return nil, fmt.Errorf("fsync mode %d: %w", cfg.Fsync, engine.ErrInvalid)
	}
	if err := MkdirAll(cfg.Dir); err != nil {
		return nil, fmt.Errorf("journal directory: %w", err)
	}
	opts := &pebble.Options{
		Logger: quiet{},
		// One small database of sequential keys: a modest memtable is
		// plenty, and keeps memory flat.
		MemTableSize: 16 << 20,
		// Write-ahead files that say how far they were synced, so that
		// damage before that point fails the open instead of reading as
		// a torn tail (Pebble's default, its oldest format, cannot tell
		// the two apart and drops every record after the damage). An
		// older log is upgraded in place.
		FormatMajorVersion: logFormat,
		// Damage Pebble finds while reading (a table file's checksum) is
		// returned by the read, which the journal reports as
		// engine.ErrCorrupt naming the file; by default Pebble also
		// passes it to the logger's Fatalf, which exits the process.
		EventListener: &pebble.EventListener{
			DataCorruption: func(info pebble.DataCorruptionInfo) { quiet{}.Errorf("%s", info) },
		},
	}
	if cfg.Fsync == FsyncNever {
		// Pebble keeps an unsynced record in its own buffer until a block
		// fills, where a killed process loses it: records are committed
		// with a sync, which for the log's files only writes to the
		// kernel (its other files keep their fsyncs).
		opts.FS = walNoSyncFS{vfs.Default}
	}
	logDir := filepath.Join(cfg.Dir, "log")
	// Named in an error about lost records: Pebble recycles the file
	// once it has read it.
	newest := newestLogFile(logDir)
	// Pebble drops a torn tail without a word: read it first (Pebble may
	// recycle the file once it has read it), report it once the log is
	// open.
	torn := tornTail(logDir)
	db, err := openLog(logDir, opts)
	if err != nil {
		return nil, err
	}
	j := &Journal{
		cfg:        cfg,
		db:         db,
		wake:       make(chan struct{}),
		kick:       make(chan struct{}, 1),
		done:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	j.undone.Store(math.MaxUint64)
	if j.snaps, j.setAside, j.ignored, j.misnamed, err = listSnapshots(cfg.Dir); err != nil {
		db.Close()
		return nil, err
	}
	for _, name := range j.ignored {
		// A snapshot renamed (snap-N.pb.orig, say) is read no more:
		// its state is the log's, or lost with it (see Replay).
		j.logf("journal: ignoring %s in %s: not a file of the controller's (a snapshot is read only as %s<16 hex digits>%s)",
			name, cfg.Dir, snapPrefix, snapSuffix)
	}
	last, err := j.lastKey()
	if err != nil {
		db.Close()
		return nil, err
	}
	if len(j.snaps) > 0 {
		last = max(last, j.snaps[0].Index)
	}
	for _, s := range [][]Snapshot{j.snaps, j.setAside} {
		if len(s) > 0 && s[0].Index > j.reach.Index {
			j.reach = s[0]
		}
	}
	markPath := filepath.Join(cfg.Dir, ackedFile)
	mark := readAcked(markPath)
	if mark > last {
		db.Close()
		where := newest
		if torn != nil {
			// Said now or never: Pebble has recycled the file.
			where = fmt.Sprintf("%s at offset %d of %d bytes (read as a torn write, and dropped)", torn.file, torn.offset, torn.size)
		}
		return nil, fmt.Errorf("the log ends at record %d, but %s says records up to %d were acknowledged: records %d to %d are lost, to damage in %s "+
			"(remove %s to start without them): %w", last, markPath, mark, last+1, mark, where, markPath, engine.ErrCorrupt)
	}
	if cfg.Fsync != FsyncNever {
		// With FsyncNever a machine's crash may lose what was
		// acknowledged: a mark would refuse the start that follows.
		if j.acked, err = os.OpenFile(markPath, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
			db.Close()
			return nil, fmt.Errorf("open %s: %w", ackedFile, err)
		}
		// A mark is written in place: bytes past its 12 (damage) would
		// keep every later one unreadable.
		if fi, err := j.acked.Stat(); err == nil && fi.Size() > 12 {
			j.acked.Truncate(12)
		}
	}
	if torn != nil && cfg.Logf != nil {
		cfg.Logf("journal: %s", torn.describe(last, markPath, mark))
	}
	j.written = last
	j.last.Store(last)
	j.durable.Store(last)
	go j.writer()
	return j, nil
}

// ackedFile (in the journal's directory) holds the index of the last
// record the journal acknowledged as durable, and the CRC-32C of its 8
// bytes. It is written in place after each group's fsync and never synced
// itself: it may lag behind the log, never run ahead of it. Pebble reads
// damage in the last 32 KiB block of its newest write-ahead file as a torn
// tail (it cannot tell them apart); the mark turns the records lost that
// way into an error. A mark that cannot be read (a crash during its
// write) counts as none.
const ackedFile = "acked"

// readAcked returns the mark in path, or 0.
func readAcked(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil || len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.BigEndian.Uint32(b[8:]) {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// noteAcked records index as acknowledged (see ackedFile).
func (j *Journal) noteAcked(index uint64) {
	if j.acked == nil {
		return
	}
	var b [12]byte
	binary.BigEndian.PutUint64(b[:], index)
	binary.BigEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	// A failed write leaves an older mark, which still holds.
	j.acked.WriteAt(b[:], 0)
}

// newestLogFile names the newest non-empty write-ahead file in dir, or
// says there is none.
func newestLogFile(dir string) string {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for i := len(logs) - 1; i >= 0; i-- { // zero-padded numbers: sorted
		if fi, err := os.Stat(logs[i]); err == nil && fi.Size() > 0 {
			return logs[i]
		}
	}
	return "the log (no write-ahead file left)"
}

// torn is a write-ahead file that ends in part of a write: a crash of the
// machine (or the process, for FsyncBatch and FsyncAlways, during the
// write) before the write reached the disk whole. Pebble drops it and
// opens with the records before it.
type torn struct {
	file   string
	offset int64 // where the torn write starts
	size   int64 // the file's size
	// The records the write held, by its header (no checksum vouches for
	// it); count is 0 when the header is not there whole.
	first uint64
	count uint32
}

// describe says what was dropped; last is the log's last record, mark
// the last one markPath marks acknowledged (0: none). It says only what is
// known: the mode this start runs with need not be the one that wrote the
// write (a run with --fsync never acknowledges records it never synced,
// and keeps no mark), nor can a write cut short be told from damage to
// its end after its fsync, which a lagging or missing mark lets through.
func (t *torn) describe(last uint64, markPath string, mark uint64) string {
	var held string
	switch {
	case t.count == 1:
		held = fmt.Sprintf(" (by its header, record %d)", t.first)
	case t.count > 1:
		held = fmt.Sprintf(" (by its header, %d records: record %d to %d)", t.count, t.first, t.first+uint64(t.count)-1)
	}
	known := fmt.Sprintf("%s marks no record acknowledged", markPath)
	if mark > 0 {
		known = fmt.Sprintf("%s marks records up to %d acknowledged, and the log holds them", markPath, mark)
	}
	return fmt.Sprintf("log file %s ends in a torn write at offset %d of %d bytes: the write%s is dropped and the log ends at record %d; %s "+
		"(a write cut short by a crash under --fsync batch or always was not acknowledged; one under --fsync never, "+
		"which keeps no mark, or damaged after its fsync may have been)",
		t.file, t.offset, t.size, held, last, known)
}

// tornTail reads the newest write-ahead file in dir, the one Pebble
// forgives a torn end (an older one's fails the open), and returns its
// torn write, or nil for a clean end, an empty or unreadable file, or
// damage (Pebble's open reports that).
//
// Pebble reads a record cut short the same as the end of a reused file
// (the writes of its previous life follow the last record): the bytes
// where the next record would start tell them apart. A chunk header of
// this file (its log number) or zeros there are the start of a write
// that did not reach the disk whole; anything else is the previous
// life's. (A write none of whose bytes reached the disk leaves no trace.)
func tornTail(dir string) *torn {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) == 0 {
		return nil
	}
	path := logs[len(logs)-1] // zero-padded numbers: sorted
	num, _, ok := wal.ParseLogFilename(filepath.Base(path))
	if !ok {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return nil
	}
	r := newRecordReader(record.NewReader, bytes.NewReader(b), uint64(num))
	var end int64 // where the last whole record ends
	for {
		end = r.Offset()
		rec, err := r.Next()
		if err == nil {
			_, err = io.Copy(io.Discard, rec)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if !errors.Is(err, record.ErrUnexpectedEOF) {
				return nil
			}
			break
		}
	}
	const block, walSyncHeader, recyclableHeader = 32 << 10, 19, 11
	at := end
	if rest := block - at%block; rest < walSyncHeader && bytes.Count(b[at:min(at+rest, int64(len(b)))], []byte{0}) == int(min(rest, int64(len(b))-at)) {
		at += rest // the writer zeroes a block's end too short for a header
	}
	t := &torn{file: path, offset: end, size: int64(len(b))}
	if at >= int64(len(b)) {
		return t // the next block, where the write went on, is gone
	}
	tail := b[at:]
	if bytes.Count(tail, []byte{0}) == len(tail) {
		return t // the file grew, its bytes did not reach the disk
	}
	if len(tail) < recyclableHeader {
		return t
	}
	enc, header := tail[6], 0
	switch {
	case enc >= 9 && enc <= 12:
		header = walSyncHeader
	case enc >= 5 && enc <= 8:
		header = recyclableHeader
	default:
		return nil // the previous life's bytes
	}
	if binary.LittleEndian.Uint32(tail[7:11]) != uint32(num) {
		return nil
	}
	// A batch: sequence number (8), count (4), then its first entry:
	// kind, key length, key (the record's index).
	if p := tail[min(header, len(tail)):]; len(p) >= 12+2+8 && p[13] == 8 {
		t.count = binary.LittleEndian.Uint32(p[8:12])
		t.first = binary.BigEndian.Uint64(p[14:22])
	}
	return t
}

// newRecordReader calls record.NewReader (passed as open) with the log
// number n: the type of its parameter is in a package of Pebble's that
// cannot be imported.
func newRecordReader[N ~uint64](open func(io.Reader, N) *record.Reader, r io.Reader, n uint64) *record.Reader {
	return open(r, N(n))
}

// logFormat is the Pebble format of the log: the first whose write-ahead
// files carry sync offsets.
const logFormat = pebble.FormatWALSyncChunks

// openLog opens the Pebble database at dir, upgrading an older one to
// opts.FormatMajorVersion.
func openLog(dir string, opts *pebble.Options) (*pebble.DB, error) {
	// A database created or upgraded now writes its first write-ahead file
	// in the format it had before (Pebble creates the file before it
	// upgrades); the next file has sync offsets.
	fs := opts.FS
	if fs == nil {
		fs = vfs.Default
	}
	upgrade := true
	if d, err := pebble.Peek(dir, fs); err == nil && d.Exists {
		upgrade = d.FormatMajorVersion < opts.FormatMajorVersion
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		if pebble.IsCorruptionError(err) {
			// Pebble's details name the file and the offset.
			where := strings.Join(crdberrors.GetAllDetails(err), "; ")
			if where == "" {
				where = dir
			}
			return nil, fmt.Errorf("damaged log (%s): %w: %w", where, engine.ErrCorrupt, err)
		}
		return nil, fmt.Errorf("open log: %w", err)
	}
	if upgrade {
		if err := db.Flush(); err != nil {
			db.Close()
			return nil, fmt.Errorf("start a log file in format %v: %w", opts.FormatMajorVersion, err)
		}
	}
	return db, nil
}

func key(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func (j *Journal) lastKey() (uint64, error) {
	it, err := j.db.NewIter(nil)
	if err != nil {
		return 0, fmt.Errorf("read log: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return 0, j.readErr(err)
		}
		return 0, nil
	}
	if len(it.Key()) != 8 {
		return 0, fmt.Errorf("log holds a key of %d bytes: %w", len(it.Key()), engine.ErrCorrupt)
	}
	return binary.BigEndian.Uint64(it.Key()), nil
}

// listSnapshots returns the snapshot files in dir and those set aside
// (.bad), each newest first, the names of the files it does not
// recognise and of the snapshots set aside as misnamed; it removes
// temporary files a crash left behind.
func listSnapshots(dir string) (snaps, bad []Snapshot, ignored, misnamed []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("list snapshots: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if name == "log" || name == ackedFile {
			continue
		}
		if !strings.HasPrefix(name, snapPrefix) {
			ignored = append(ignored, name)
			continue
		}
		if strings.Contains(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		list := &snaps
		num := strings.TrimPrefix(name, snapPrefix)
		if n, ok := strings.CutSuffix(num, snapSuffix+misnamedSuffix); ok {
			if _, err := strconv.ParseUint(n, 16, 64); err == nil {
				// Set aside by an earlier start, which said so.
				misnamed = append(misnamed, name)
				continue
			}
		}
		if n, ok := strings.CutSuffix(num, badSuffix); ok {
			list, num = &bad, n
		}
		num, ok := strings.CutSuffix(num, snapSuffix)
		idx, err := strconv.ParseUint(num, 16, 64)
		if !ok || err != nil {
			ignored = append(ignored, name)
			continue
		}
		*list = append(*list, Snapshot{Index: idx, Path: filepath.Join(dir, name)})
	}
	slices.SortFunc(snaps, newestFirst)
	slices.SortFunc(bad, newestFirst)
	return snaps, bad, ignored, misnamed, nil
}

// newestFirst orders snapshots by index, the newest first.
func newestFirst(a, b Snapshot) int { return cmp.Compare(b.Index, a.Index) }

// Snapshots returns the snapshots to recover from, newest first (at most
// two). If the newest cannot be read, replaying from the one before it
// (with every record since) gives the same state.
func (j *Journal) Snapshots() []Snapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.snaps)
}

// Discard sets aside a snapshot that could not be read (it is renamed
// with a .bad suffix, for inspection), so that the next snapshot follows
// the one before it. Of the snapshots set aside, the newest keepSetAside
// are kept: older ones are removed (Config.Logf is told), so that a
// controller that keeps failing to read its snapshots does not fill the
// disk. Only the newest matters to recovery (see Replay).
func (j *Journal) Discard(s Snapshot) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.snaps = slices.DeleteFunc(j.snaps, func(x Snapshot) bool { return x == s })
	bad := Snapshot{Index: s.Index, Path: s.Path + badSuffix}
	if err := os.Rename(s.Path, bad.Path); err != nil {
		return fmt.Errorf("set aside unreadable snapshot: %w", err)
	}
	if j.reach == s {
		j.reach = bad // the file a failed replay names
	}
	j.setAside = slices.DeleteFunc(j.setAside, func(x Snapshot) bool { return x == bad }) // replaced by the rename
	j.setAside = append(j.setAside, bad)
	slices.SortFunc(j.setAside, newestFirst)
	for len(j.setAside) > keepSetAside {
		old := j.setAside[len(j.setAside)-1]
		if err := os.Remove(old.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// Kept, and tried again at the next Discard.
			j.logf("journal: remove %s, an older snapshot set aside (%d newer kept): %v", old.Path, keepSetAside, err)
			break
		}
		j.logf("journal: removed %s, an older snapshot set aside: the newest %d are kept", old.Path, keepSetAside)
		j.setAside = j.setAside[:len(j.setAside)-1]
	}
	return nil
}

// SetAsideMisnamed sets aside a snapshot whose file holds the state
// through another record than its name gives (renamed, or copied in): it
// is renamed with a .misnamed suffix, read no more, and, its name being
// no record's, a replay need not reach it.
func (j *Journal) SetAsideMisnamed(s Snapshot) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	path := s.Path + misnamedSuffix
	if err := os.Rename(s.Path, path); err != nil {
		return fmt.Errorf("set aside misnamed snapshot: %w", err)
	}
	j.snaps = slices.DeleteFunc(j.snaps, func(x Snapshot) bool { return x == s })
	j.misnamed = append(j.misnamed, filepath.Base(path))
	if j.reach == s {
		j.reach = Snapshot{}
		for _, l := range [][]Snapshot{j.snaps, j.setAside} {
			if len(l) > 0 && l[0].Index > j.reach.Index {
				j.reach = l[0]
			}
		}
	}
	return nil
}

func (j *Journal) logf(format string, args ...any) {
	if j.cfg.Logf != nil {
		j.cfg.Logf(format, args...)
	}
}

// SetAside returns the snapshots set aside as unreadable, by [Journal.Discard]
// or before this Open, newest first; Path is the .bad file's.
func (j *Journal) SetAside() []Snapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.setAside)
}

// Replay calls fn with every record after index after, in order. A gap in
// the records (a record missing between after and the last), or a log
// that ends before the newest snapshot Open found (set aside since, or
// before: its state is lost), is an error wrapping [engine.ErrCorrupt].
// fn must not keep rec.
func (j *Journal) Replay(after uint64, fn func(index uint64, rec []byte) error) error {
	it, err := j.db.NewIter(&pebble.IterOptions{LowerBound: key(after + 1)})
	if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	defer it.Close()
	want := after + 1
	// Replayed records count as appended since the snapshot (see
	// SinceSnapshot): a process killed before it logged enough for a
	// snapshot must not leave the next one a longer log to replay.
	var replayed int64
	defer func() {
		j.mu.Lock()
		j.appended += replayed
		j.mu.Unlock()
	}()
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) != 8 {
			return fmt.Errorf("log holds a key of %d bytes: %w", len(it.Key()), engine.ErrCorrupt)
		}
		i := binary.BigEndian.Uint64(it.Key())
		if i != want {
			var unread string
			if names := slices.Concat(j.ignored, j.misnamed); want == after+1 && len(names) > 0 {
				// A snapshot renamed may be what held them.
				unread = fmt.Sprintf(" (files in %s not read: %s; a snapshot is read only as %s<16 hex digits>%s)",
					j.cfg.Dir, strings.Join(names, ", "), snapPrefix, snapSuffix)
			}
			return fmt.Errorf("log record %d follows %d; records %d to %d are missing%s: %w", i, want-1, want, i-1, unread, engine.ErrCorrupt)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("log record %d: %w", i, j.readErr(err))
		}
		replayed += int64(len(v))
		if err := fn(i, v); err != nil {
			return fmt.Errorf("log record %d: %w", i, err)
		}
		want++
	}
	if err := it.Error(); err != nil {
		return j.readErr(err)
	}
	if end := want - 1; end < j.reach.Index {
		return fmt.Errorf("the log ends at record %d, but snapshot %s held the state through record %d: records %d to %d are lost "+
			"(remove %s to start without them): %w", end, filepath.Base(j.reach.Path), j.reach.Index, end+1, j.reach.Index, j.reach.Path, engine.ErrCorrupt)
	}
	return nil
}

// readErr is the error of a failed read of the log: for damage, one
// wrapping [engine.ErrCorrupt] that names the directory, and (Pebble's
// message) the file and the block in it.
func (j *Journal) readErr(err error) error {
	if !pebble.IsCorruptionError(err) {
		return fmt.Errorf("read log: %w", err)
	}
	return fmt.Errorf("damaged log in %s: %w: %w", filepath.Join(j.cfg.Dir, "log"), engine.ErrCorrupt, err)
}

// Append adds a record and returns its index. It does not wait: the record
// becomes durable with the writer's next group ([Journal.Wait]). The
// journal owns rec from now on. Call it in the order the changes happened.
func (j *Journal) Append(rec []byte) uint64 {
	j.mu.Lock()
	if j.err == nil {
		// After a failure nothing is written any more (and its waiters
		// get the failure): holding records would only grow memory.
		j.pending = append(j.pending, rec)
		j.appended += int64(len(rec))
	}
	i := j.last.Add(1)
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
	return i
}

// Last returns the index of the last appended record: a reader that must
// not answer with changes that could still be lost waits for it.
func (j *Journal) Last() uint64 { return j.last.Load() }

// Durable returns the index of the last durable record.
func (j *Journal) Durable() uint64 { return j.durable.Load() }

// Wait blocks until record index is durable (for FsyncNever: handed to
// the operating system), ctx ends, or the journal fails or closes.
// Errors: the context's, an error wrapping [ErrFailed], or one wrapping
// [engine.ErrClosed].
func (j *Journal) Wait(ctx context.Context, index uint64) error {
	for {
		if j.durable.Load() >= index && index < j.undone.Load() {
			return nil
		}
		j.mu.Lock()
		if j.durable.Load() >= index && index < j.undone.Load() {
			j.mu.Unlock()
			return nil
		}
		if j.err != nil {
			err := j.err
			j.mu.Unlock()
			return err
		}
		if j.closed {
			j.mu.Unlock()
			return fmt.Errorf("journal: record %d: %w", index, engine.ErrClosed)
		}
		wake := j.wake
		j.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("wait for log record %d: %w", index, ctx.Err())
		}
	}
}

// Pos returns the current position. Taken while every lock under which
// records are appended is held, it is the position of a consistent copy
// of the state ([Journal.WriteSnapshot]).
func (j *Journal) Pos() Pos {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Pos{Index: j.last.Load(), Bytes: j.appended}
}

// SinceSnapshot returns the bytes of the records appended after the state
// of the newest snapshot was taken, those a start replayed included: the
// controller snapshots when they outgrow its state.
func (j *Journal) SinceSnapshot() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appended - j.snapAt
}

// writer writes pending records in groups until the journal closes.
func (j *Journal) writer() {
	defer close(j.writerDone)
	// With FsyncNever too: its log files only write to the kernel on a
	// sync (see walNoSyncFS).
	sync := pebble.Sync
	for {
		select {
		case <-j.kick:
		case <-j.done:
			j.flush(sync) // what was appended before Close
			return
		}
		j.flush(sync)
	}
}

// flush writes every pending record: in one group, or one by one for
// FsyncAlways.
func (j *Journal) flush(opt *pebble.WriteOptions) {
	for {
		j.mu.Lock()
		if j.err != nil || len(j.pending) == 0 {
			j.mu.Unlock()
			return
		}
		group := j.pending
		if j.cfg.Fsync == FsyncAlways {
			group = group[:1]
		}
		first := j.written + 1
		j.mu.Unlock()

		start := time.Now()
		b := j.db.NewBatch()
		for k, rec := range group {
			b.Set(key(first+uint64(k)), rec, nil)
		}
		err := b.Commit(opt)
		b.Close()
		j.groups.Add(1)
		if err == nil {
			// A failed group reached no disk: not counted as written.
			if j.cfg.OnWrite != nil {
				j.cfg.OnWrite(time.Since(start), len(group))
			}
			j.noteAcked(first + uint64(len(group)) - 1)
		}

		j.mu.Lock()
		switch {
		case err != nil && j.err == nil:
			j.err = fmt.Errorf("log records %d to %d: %w: %w", first, first+uint64(len(group))-1, ErrFailed, err)
		case err == nil:
			if j.err == nil { // else Fail dropped pending meanwhile
				clear(j.pending[:len(group)])
				j.pending = j.pending[len(group):]
			}
			j.written = first + uint64(len(group)) - 1
			j.durable.Store(j.written)
		}
		close(j.wake)
		j.wake = make(chan struct{})
		j.mu.Unlock()
	}
}

// Stats counts the journal's work since it opened.
type Stats struct {
	Appended uint64 // index of the last record appended
	Durable  uint64 // index of the last durable record
	Groups   int64  // writes to the log, each with its fsync (FsyncNever: none)
}

// Stats returns the journal's counters.
func (j *Journal) Stats() Stats {
	return Stats{Appended: j.last.Load(), Durable: j.durable.Load(), Groups: j.groups.Load()}
}

// Fail stops the journal as a failed write would: records not written
// yet never are, and waiting for them (or for any record appended from now
// on) returns an error wrapping [ErrFailed] and err. For a caller whose
// state ran ahead of what it can make durable; a restart recovers what
// reached the disk. Only the first failure counts.
//
// undone, unless 0, is the first record whose change a restart undoes
// although it may be durable (a checkpoint load whose snapshot failed):
// waiting for it or a later record fails too, so that nothing read since
// it is acknowledged.
func (j *Journal) Fail(err error, undone uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return
	}
	j.err = fmt.Errorf("%w: %w", ErrFailed, err)
	if undone != 0 {
		j.undone.Store(undone)
	}
	// Not cleared: the writer may be writing the group it took from it.
	j.pending = nil
	close(j.wake)
	j.wake = make(chan struct{})
}

// Err returns the journal's write failure (wrapping [ErrFailed]), or nil.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// WriteSnapshot writes a snapshot of the state at pos (see [Journal.Pos]):
// write produces the file's contents. The file is written beside its final name,
// fsynced and renamed into place. Then the log drops the records the
// snapshot before it needed, and older snapshot files are removed: the
// newest two stay, with every record since the older of them.
//
// pos must grow from one snapshot to the next.
func (j *Journal) WriteSnapshot(pos Pos, write func(io.Writer) error) error {
	// One at a time: two writers (the controller's snapshotter, a
	// checkpoint load) finishing out of order would list the older as the
	// newest and truncate the log past it.
	j.snapMu.Lock()
	defer j.snapMu.Unlock()
	index := pos.Index
	j.mu.Lock()
	if j.err != nil {
		// After Fail, the state may hold what the log never will.
		err := j.err
		j.mu.Unlock()
		return err
	}
	if len(j.snaps) > 0 && index <= j.snaps[0].Index {
		j.mu.Unlock()
		return fmt.Errorf("snapshot at record %d, the newest is at %d: %w", index, j.snaps[0].Index, engine.ErrInvalid)
	}
	if index > j.last.Load() {
		j.mu.Unlock()
		return fmt.Errorf("snapshot at record %d, the log ends at %d: %w", index, j.last.Load(), engine.ErrInvalid)
	}
	j.mu.Unlock()
	// A snapshot may hold changes whose records are not durable yet; if
	// it were renamed into place first and the process died, the records
	// before it would have a hole that a fallback to the older snapshot
	// could not replay across.
	if err := j.Wait(context.Background(), index); err != nil {
		return err
	}
	path := filepath.Join(j.cfg.Dir, fmt.Sprintf("%s%016x%s", snapPrefix, index, snapSuffix))
	if err := WriteFileAtomic(path, write); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	j.mu.Lock()
	j.snaps = append([]Snapshot{{Index: index, Path: path}}, j.snaps...)
	j.snapAt = pos.Bytes
	var drop []Snapshot
	if len(j.snaps) > 2 {
		drop = j.snaps[2:]
		j.snaps = j.snaps[:2]
	}
	keepFrom := j.snaps[len(j.snaps)-1].Index // records after it stay
	truncate := len(j.snaps) == 2
	j.mu.Unlock()
	// The snapshot is in place: a restart starts from it whatever happens
	// next, so what fails from here is cleanup, not the snapshot.
	var errs []error
	if truncate {
		if err := j.db.DeleteRange(key(0), key(keepFrom+1), pebble.NoSync); err != nil {
			errs = append(errs, fmt.Errorf("truncate log: %w", err))
		}
	}
	for _, s := range drop {
		if err := os.Remove(s.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove old snapshot: %w", err))
		}
	}
	if len(errs) > 0 {
		return &CleanupError{Snapshot: path, Err: errors.Join(errs...)}
	}
	return nil
}

// CleanupError is WriteSnapshot's report of a snapshot written and in
// place (a restart starts from it) whose cleanup failed: the log was not
// truncated, or an older snapshot file not removed. The state is durable;
// only disk space is at stake, and the next snapshot tries again.
type CleanupError struct {
	Snapshot string
	Err      error
}

func (e *CleanupError) Error() string {
	return fmt.Sprintf("snapshot %s written, but its cleanup failed: %v", filepath.Base(e.Snapshot), e.Err)
}

func (e *CleanupError) Unwrap() error { return e.Err }

// Close writes what was appended, stops the writer and closes the log.
// Waiters still waiting return an error wrapping [engine.ErrClosed]. It is
// idempotent.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	close(j.done)
	<-j.writerDone
	j.mu.Lock()
	close(j.wake)
	j.wake = make(chan struct{})
	err := j.err
	j.mu.Unlock()
	if j.acked != nil {
		err = errors.Join(err, j.acked.Close())
	}
	return errors.Join(err, j.db.Close())
}

// WriteFileAtomic writes path through write: into a temporary file beside
// it, fsynced, renamed into place, and the directory fsynced. On failure
// nothing is left behind and an existing file at path is untouched.
func WriteFileAtomic(path string, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return SyncDir(dir)
}

// MkdirAll is os.MkdirAll (mode 0700) for directories that must survive a
// crash once something in them is synced: the parent of each directory it
// makes is synced too, so that the new entries are on disk (a file synced
// in a directory whose own entry was lost is lost with it).
func MkdirAll(dir string) error {
	var made []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append(made, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range made {
		if err := SyncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// SyncDir fsyncs a directory, so that entries created or renamed in it
// survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// quiet is a Pebble logger that drops informational chatter ("Found 0
// WALs") and keeps errors on standard error.
type quiet struct{}

func (quiet) Infof(string, ...any) {}
func (quiet) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tq journal: pebble: "+format+"\n", args...)
}
func (quiet) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tq journal: pebble: "+format+"\n", args...)
	os.Exit(2)
}

// walNoSyncFS is the file system of a FsyncNever journal: Pebble's log
// files (*.log) skip their fsyncs, so that committing with a sync hands a
// record to the kernel, which a killed process cannot lose, without
// waiting for the disk. (Committed without a sync, a record stays in
// Pebble's buffer until a 32 KiB block fills.)
type walNoSyncFS struct{ vfs.FS }

func (fs walNoSyncFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return noSyncFile{f}, nil
}

func (fs walNoSyncFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs walNoSyncFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.wrap(name, f, err)
}

func (fs walNoSyncFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrap(newname, f, err)
}

type noSyncFile struct{ vfs.File }

func (noSyncFile) Sync() error                { return nil }
func (noSyncFile) SyncData() error            { return nil }
func (noSyncFile) SyncTo(int64) (bool, error) { return true, nil }
