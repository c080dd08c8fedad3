package journal

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// writeAcked appends n records of about 110 bytes to the journal in dir,
// waiting for every tenth to be durable, and closes it.
func writeAcked(t *testing.T, dir string, n int) {
	t.Helper()
	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	var last uint64
	for i := 1; i <= n; i++ {
		last = j.Append([]byte(strings.Repeat("x", 100) + string(rec(i))))
		if i%10 == 0 {
			require.NoError(t, j.Wait(context.Background(), last))
		}
	}
	require.NoError(t, j.Wait(context.Background(), last))
	require.NoError(t, j.Close())
}

// newestLog returns the path of the newest non-empty write-ahead file of
// the journal in dir.
func newestLog(t *testing.T, dir string) string {
	t.Helper()
	logs, err := filepath.Glob(filepath.Join(dir, "log", "*.log"))
	require.NoError(t, err)
	var newest string
	for _, l := range logs { // names are zero-padded numbers: sorted
		if fi, err := os.Stat(l); err == nil && fi.Size() > 0 {
			newest = l
		}
	}
	require.NotEmpty(t, newest, "a write-ahead file with records")
	return newest
}

// flipByte flips the byte at fraction at of the file at path and
// returns its offset.
func flipByte(t *testing.T, path string, at float64) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	off := int(float64(len(b)) * at)
	b[off] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return int64(off)
}

// TestDamagedLogIsAnError: a byte flipped anywhere in the newest
// write-ahead file fails Open with an error naming the file, instead of
// reading as a torn tail. Pebble's oldest format, which the journal used
// to open with, cannot tell the two apart: Open and Replay succeeded and
// every acknowledged record after the damage was gone (1740 of 2000 came
// back for a flip at 30%), their indexes given out again. Before the
// file's last 32 KiB block the log's format tells (checked here without
// the mark of acknowledged records); in that block only the mark does.
func TestDamagedLogIsAnError(t *testing.T) {
	for _, at := range []float64{0.1, 0.3, 0.5, 0.9, 0.99} {
		t.Run(fmt.Sprintf("at=%v", at), func(t *testing.T) {
			dir := t.TempDir()
			writeAcked(t, dir, 2000)
			wal := newestLog(t, dir)
			off := flipByte(t, wal, at)
			if fi, err := os.Stat(wal); err == nil && off < fi.Size()&^(32<<10-1) {
				mark := filepath.Join(dir, ackedFile)
				require.NoError(t, os.Rename(mark, mark+".aside"))
				_, err := Open(Config{Dir: dir})
				require.ErrorIs(t, err, engine.ErrCorrupt, "the format alone finds damage at %d of %d", off, fi.Size())
				require.NoError(t, os.Rename(mark+".aside", mark))
			}
			j, err := Open(Config{Dir: dir})
			if err == nil {
				n := 0
				rerr := j.Replay(0, func(uint64, []byte) error { n++; return nil })
				j.Close()
				t.Fatalf("opened a log damaged at byte %d: %d of 2000 records, replay error %v", off, n, rerr)
			}
			require.ErrorIs(t, err, engine.ErrCorrupt)
			assert.Contains(t, err.Error(), filepath.Base(wal), "the error names the damaged file")

			// Refusing once does not make the loss the new normal (Pebble
			// has recycled the damaged file by now).
			_, err = Open(Config{Dir: dir})
			require.ErrorIs(t, err, engine.ErrCorrupt, "a second start is refused too")
		})
	}
}

// TestOldFormatLogOpens: a log written with Pebble's oldest format (as
// the journal wrote them before it asked for WAL sync chunks) opens, keeps
// its records, and is upgraded: damage written after the upgrade is
// caught by the format, even in the first write-ahead file after it.
func TestOldFormatLogOpens(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(filepath.Join(dir, "log"), &pebble.Options{Logger: quiet{}, FormatMajorVersion: pebble.FormatMinSupported})
	require.NoError(t, err)
	for i := uint64(1); i <= 10; i++ {
		require.NoError(t, db.Set(key(i), rec(int(i)), pebble.Sync))
	}
	require.NoError(t, db.Close())

	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	assert.Len(t, replayAll(t, j, 0), 10)
	assert.GreaterOrEqual(t, j.db.FormatMajorVersion(), pebble.FormatWALSyncChunks)
	// Less than a memtable: all in the file Open started.
	for i := 11; i <= 500; i++ {
		require.NoError(t, j.Wait(context.Background(), j.Append([]byte(strings.Repeat("x", 100)+string(rec(i))))))
	}
	require.NoError(t, j.Close())

	flipByte(t, newestLog(t, dir), 0.3)
	require.NoError(t, os.Remove(filepath.Join(dir, ackedFile)))
	_, err = Open(Config{Dir: dir})
	require.ErrorIs(t, err, engine.ErrCorrupt)
}

// TestAckedMarkNotWrittenForFsyncNever: a FsyncNever journal leaves no
// mark, so the loss its mode allows (a machine's crash) does not refuse
// the next start.
func TestAckedMarkNotWrittenForFsyncNever(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, FsyncNever)
	require.NoError(t, j.Wait(context.Background(), j.Append(rec(1))))
	require.NoError(t, j.Close())
	_, err := os.Stat(filepath.Join(dir, ackedFile))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// TestDamagedTableIsAnError: a byte flipped in a table file of the log
// (where Pebble keeps records once its memtable is flushed) fails Open or
// Replay with an error wrapping engine.ErrCorrupt that names the file.
// Pebble reports such damage to its event listener, whose default for a
// database with a logger calls the logger's Fatalf: the journal's exited
// the process (status 2) from inside Replay, so a controller (or a
// program embedding one) died at start with no error to handle.
func TestDamagedTableIsAnError(t *testing.T) {
	for _, at := range []float64{0.1, 0.3, 0.5, 0.9} {
		t.Run(fmt.Sprintf("at=%v", at), func(t *testing.T) {
			dir := t.TempDir()
			writeAcked(t, dir, 2000)
			j, err := Open(Config{Dir: dir})
			require.NoError(t, err)
			require.NoError(t, j.db.Flush()) // the records into a table file
			require.NoError(t, j.Close())
			tables, err := filepath.Glob(filepath.Join(dir, "log", "*.sst"))
			require.NoError(t, err)
			require.Len(t, tables, 1)
			off := flipByte(t, tables[0], at)

			j, err = Open(Config{Dir: dir})
			n := 0
			if err == nil {
				err = j.Replay(0, func(uint64, []byte) error { n++; return nil })
				j.Close()
			}
			require.Error(t, err, "a table damaged at byte %d: replayed %d of 2000 records", off, n)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			name := strings.TrimSuffix(filepath.Base(tables[0]), ".sst")
			assert.Contains(t, err.Error(), name, "the error names the damaged file")
		})
	}
}

// The acked mark is 8 bytes of index and their CRC-32C: a mark that
// cannot be read (cut short by a crash during its write, or damaged)
// counts as none and refuses nothing, and the next record acknowledged
// makes it good again; a whole one past the log's end refuses the start,
// naming it.
func TestAckedMarkThatCannotBeReadCountsAsNone(t *testing.T) {
	markOf := func(i uint64) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint64(b, i)
		binary.BigEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
		return b
	}
	badCRC := markOf(11)
	badCRC[11] ^= 1
	for name, b := range map[string][]byte{
		"empty":        {},
		"cut short":    markOf(11)[:7],
		"bad checksum": badCRC,
		"too long":     append(markOf(11), 0),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeAcked(t, dir, 10)
			mark := filepath.Join(dir, ackedFile)
			require.NoError(t, os.WriteFile(mark, b, 0o600))
			j, err := Open(Config{Dir: dir})
			require.NoError(t, err)
			assert.Len(t, replayAll(t, j, 0), 10)
			require.NoError(t, j.Wait(context.Background(), j.Append(rec(11))))
			require.NoError(t, j.Close())
			assert.Equal(t, uint64(11), readAcked(mark), "the mark once a record was acknowledged")
		})
	}
	dir := t.TempDir()
	writeAcked(t, dir, 10)
	mark := filepath.Join(dir, ackedFile)
	require.NoError(t, os.WriteFile(mark, markOf(11), 0o600))
	_, err := Open(Config{Dir: dir})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.ErrorContains(t, err, "the log ends at record 10, but "+mark+" says records up to 11 were acknowledged: records 11 to 11 are lost")
}

// A start refused for acknowledged records a torn tail dropped says where
// in which file the tail was cut: Pebble recycles the file as it opens,
// so the next start, with the mark removed, has nothing left to report.
func TestRefusedStartSaysWhereTheTornTailWas(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	for i := 1; i <= 50; i++ {
		r := string(rec(i))
		if i == 50 {
			r += strings.Repeat("y", 2000) // the write the cut tears
		}
		require.NoError(t, j.Wait(context.Background(), j.Append([]byte(r))))
	}
	require.NoError(t, j.Close())
	wal := newestLog(t, dir)
	fi, err := os.Stat(wal)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(wal, fi.Size()-1000))

	_, err = Open(Config{Dir: dir})
	require.ErrorIs(t, err, engine.ErrCorrupt)
	assert.ErrorContains(t, err, "records 50 to 50 are lost")
	assert.Regexp(t, regexp.QuoteMeta(wal)+` at offset \d+ of `+strconv.FormatInt(fi.Size()-1000, 10)+` bytes \(read as a torn write, and dropped\)`, err.Error())
}
