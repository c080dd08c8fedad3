package journal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logLines collects what a journal reports through Config.Logf.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) all() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestTornTailIsReported: a FsyncNever log whose newest write-ahead file
// ends in part of a write (a machine's crash) opens with the records
// before it, and says so: the file, the offset where the torn write
// starts, the bytes dropped and the records the write held. Pebble drops
// such a tail without a word (it logs at info level, which the journal
// discards, and the same line for a clean end), so a start after a crash
// that lost acknowledged records looked like any other.
func TestTornTailIsReported(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Config{Dir: dir, Fsync: FsyncNever})
	require.NoError(t, err)
	const n = 50
	var want []string
	for i := 1; i <= n; i++ {
		r := string(rec(i))
		if i == n {
			r += strings.Repeat("y", 2000) // the torn write: cut in its middle
		}
		want = append(want, r)
		require.NoError(t, j.Wait(context.Background(), j.Append([]byte(r))))
	}
	require.NoError(t, j.Close())

	wal := newestLog(t, dir)
	fi, err := os.Stat(wal)
	require.NoError(t, err)
	cut := fi.Size() - 1000
	require.NoError(t, os.Truncate(wal, cut))

	var logs logLines
	j, err = Open(Config{Dir: dir, Fsync: FsyncNever, Logf: logs.logf})
	require.NoError(t, err)
	assert.Equal(t, want[:n-1], replayAll(t, j, 0), "the records before the torn write")
	got := logs.all()
	assert.Contains(t, got, filepath.Base(wal), "names the file")
	assert.Contains(t, got, "torn")
	assert.Contains(t, got, fmt.Sprintf("record %d", n), "names the record dropped")
	assert.Regexp(t, `offset \d+`, got)

	// A clean end says nothing.
	require.NoError(t, j.Close())
	logs = logLines{}
	j, err = Open(Config{Dir: dir, Fsync: FsyncNever, Logf: logs.logf})
	require.NoError(t, err)
	assert.Empty(t, logs.all())
	require.NoError(t, j.Close())
}

// TestKilledInReusedFileIsNotTorn: a process killed while its write-ahead
// file is one Pebble reused (the writes of its previous life follow the
// last record, which Pebble reads as it reads a torn write) reports
// nothing: its records all reached the kernel.
func TestKilledInReusedFileIsNotTorn(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, FsyncNever)
	i := 0
	write := func(n int) {
		for range n {
			i++
			require.NoError(t, j.Wait(context.Background(), j.Append([]byte(strings.Repeat("z", 300)+string(rec(i))))))
		}
	}
	for range 3 {
		write(300)
		require.NoError(t, j.db.Flush()) // a new write-ahead file; the old one is kept for reuse
	}
	write(5)
	// What a killed process leaves: every write in the kernel, no close.
	killed := t.TempDir()
	require.NoError(t, os.CopyFS(killed, os.DirFS(dir)))
	require.NoError(t, os.Remove(filepath.Join(killed, "log", "LOCK")))

	var logs logLines
	k, err := Open(Config{Dir: killed, Fsync: FsyncNever, Logf: logs.logf})
	require.NoError(t, err)
	defer k.Close()
	assert.Len(t, replayAll(t, k, 0), i)
	assert.Empty(t, logs.all())
}

// TestTornTailSaysOnlyWhatIsKnown: the line about a torn tail says what
// the mark of acknowledged records says, not what the mode of this start
// would imply: a log written with --fsync never acknowledged records it
// never synced, and a start with --fsync batch after it used to say that
// no record of the torn write was acknowledged.
func TestTornTailSaysOnlyWhatIsKnown(t *testing.T) {
	for _, marked := range []int{0, 10} {
		t.Run(fmt.Sprintf("marked %d", marked), func(t *testing.T) {
			dir := t.TempDir()
			i := 0
			write := func(mode Fsync, n int) {
				j, err := Open(Config{Dir: dir, Fsync: mode})
				require.NoError(t, err)
				for range n {
					i++
					r := string(rec(i))
					if i == marked+40 {
						r += strings.Repeat("y", 2000) // the torn write
					}
					require.NoError(t, j.Wait(context.Background(), j.Append([]byte(r))))
				}
				require.NoError(t, j.Close())
			}
			if marked > 0 {
				write(FsyncBatch, marked)
			}
			write(FsyncNever, 40)
			wal := newestLog(t, dir)
			fi, err := os.Stat(wal)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(wal, fi.Size()-1000))

			var logs logLines
			j, err := Open(Config{Dir: dir, Fsync: FsyncBatch, Logf: logs.logf})
			require.NoError(t, err)
			defer j.Close()
			got := logs.all()
			assert.Contains(t, got, fmt.Sprintf("the log ends at record %d", i-1))
			assert.NotContains(t, got, "no record in it was acknowledged", "record %d was acknowledged, written with --fsync never", i)
			mark := filepath.Join(dir, ackedFile)
			if marked == 0 {
				assert.Contains(t, got, mark+" marks no record acknowledged")
			} else {
				assert.Contains(t, got, fmt.Sprintf("%s marks records up to %d acknowledged, and the log holds them", mark, marked))
			}
			assert.Contains(t, got, "one under --fsync never")
		})
	}
}
