package journal

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

func open(t *testing.T, dir string, mode Fsync) *Journal {
	t.Helper()
	j, err := Open(Config{Dir: dir, Fsync: mode})
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

func rec(i int) []byte { return []byte(fmt.Sprintf("record %d", i)) }

// replayAll returns the records after index after.
func replayAll(t *testing.T, j *Journal, after uint64) []string {
	t.Helper()
	var got []string
	require.NoError(t, j.Replay(after, func(_ uint64, r []byte) error {
		got = append(got, string(r))
		return nil
	}))
	return got
}

func TestAppendWaitReplay(t *testing.T) {
	for _, mode := range []Fsync{FsyncBatch, FsyncAlways, FsyncNever} {
		t.Run("fsync="+mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			j := open(t, dir, mode)
			var last uint64
			for i := 1; i <= 100; i++ {
				idx := j.Append(rec(i))
				require.Equal(t, uint64(i), idx, "records are numbered from 1")
				last = idx
			}
			require.NoError(t, j.Wait(context.Background(), last))
			assert.GreaterOrEqual(t, j.Durable(), last)
			require.NoError(t, j.Close())

			j2 := open(t, dir, mode)
			got := replayAll(t, j2, 0)
			require.Len(t, got, 100)
			assert.Equal(t, "record 1", got[0])
			assert.Equal(t, "record 100", got[99])
			assert.Equal(t, uint64(101), j2.Append(rec(101)), "numbering continues after a restart")
		})
	}
}

// TestGroupCommit checks that concurrent appenders share writes: far fewer
// groups than records reach the log when many wait at once.
func TestGroupCommit(t *testing.T) {
	j := open(t, t.TempDir(), FsyncBatch)
	const writers, each = 16, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				idx := j.Append(rec(w*each + i))
				if err := j.Wait(context.Background(), idx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := j.Stats()
	assert.Equal(t, uint64(writers*each), st.Durable)
	// With 16 waiting at once most groups carry several records; one
	// fsync per record would be 800 groups.
	assert.Less(t, st.Groups, int64(writers*each/2), "records share writes")
	t.Logf("%d records in %d groups", st.Durable, st.Groups)
}

// TestFsyncAlwaysWritesEachRecordAlone: with FsyncAlways concurrent
// records share no write: each is written and synced on its own, as
// tq serve --fsync always says.
func TestFsyncAlwaysWritesEachRecordAlone(t *testing.T) {
	j := open(t, t.TempDir(), FsyncAlways)
	const writers, each = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := j.Wait(context.Background(), j.Append(rec(w*each+i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := j.Stats()
	assert.Equal(t, uint64(writers*each), st.Durable)
	assert.Equal(t, int64(writers*each), st.Groups, "one write per record")
}

func TestWaitContext(t *testing.T) {
	j := open(t, t.TempDir(), FsyncBatch)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := j.Wait(ctx, 1_000_000)
	require.ErrorIs(t, err, context.Canceled)
}

func TestWaitAfterClose(t *testing.T) {
	j := open(t, t.TempDir(), FsyncBatch)
	require.NoError(t, j.Close())
	err := j.Wait(context.Background(), 1_000_000)
	require.ErrorIs(t, err, engine.ErrClosed)
	require.NoError(t, j.Close(), "Close is idempotent")
}

func writeState(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

func TestSnapshotsBoundTheLog(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, FsyncBatch)
	for i := 1; i <= 10; i++ {
		j.Append(rec(i))
	}
	p1 := j.Pos()
	require.NoError(t, j.WriteSnapshot(p1, writeState("state@10")))
	assert.Equal(t, int64(0), j.SinceSnapshot())
	for i := 11; i <= 20; i++ {
		j.Append(rec(i))
	}
	assert.Equal(t, int64(10*len("record 11")), j.SinceSnapshot())
	p2 := j.Pos()
	require.NoError(t, j.WriteSnapshot(p2, writeState("state@20")))
	for i := 21; i <= 25; i++ {
		j.Append(rec(i))
	}
	require.NoError(t, j.Wait(context.Background(), 25))
	require.NoError(t, j.Close())

	j2 := open(t, dir, FsyncBatch)
	snaps := j2.Snapshots()
	require.Len(t, snaps, 2)
	assert.Equal(t, uint64(20), snaps[0].Index)
	assert.Equal(t, uint64(10), snaps[1].Index)
	b, err := os.ReadFile(snaps[0].Path)
	require.NoError(t, err)
	assert.Equal(t, "state@20", string(b))
	assert.Equal(t, []string{"record 21", "record 22", "record 23", "record 24", "record 25"}, replayAll(t, j2, 20))
	// The older snapshot still has every record since it.
	assert.Len(t, replayAll(t, j2, 10), 15)
	// Records up to the older snapshot are gone.
	err = j2.Replay(0, func(uint64, []byte) error { return nil })
	require.ErrorIs(t, err, engine.ErrCorrupt, "replaying from before the older snapshot finds the hole")

	// A third snapshot drops the first and the records before the second.
	p3 := j2.Pos()
	require.NoError(t, j2.WriteSnapshot(p3, writeState("state@25")))
	snaps = j2.Snapshots()
	require.Len(t, snaps, 2)
	assert.Equal(t, []uint64{25, 20}, []uint64{snaps[0].Index, snaps[1].Index})
	_, err = os.Stat(filepath.Join(dir, "snap-000000000000000a.pb"))
	assert.True(t, errors.Is(err, os.ErrNotExist), "the oldest snapshot file is removed")
	assert.Len(t, replayAll(t, j2, 20), 5)
}

func TestSnapshotMustGrow(t *testing.T) {
	j := open(t, t.TempDir(), FsyncBatch)
	j.Append(rec(1))
	p := j.Pos()
	require.NoError(t, j.WriteSnapshot(p, writeState("a")))
	require.ErrorIs(t, j.WriteSnapshot(p, writeState("b")), engine.ErrInvalid)
}

func TestFailedSnapshotLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, FsyncBatch)
	j.Append(rec(1))
	boom := errors.New("boom")
	err := j.WriteSnapshot(j.Pos(), func(w io.Writer) error {
		io.WriteString(w, "partial")
		return boom
	})
	require.ErrorIs(t, err, boom)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), "snap-", "no snapshot or temporary file is left")
	}
	assert.Empty(t, j.Snapshots())
}

func TestDiscardUnreadableSnapshot(t *testing.T) {
	dir := t.TempDir()
	j := open(t, dir, FsyncBatch)
	j.Append(rec(1))
	require.NoError(t, j.WriteSnapshot(j.Pos(), writeState("one")))
	j.Append(rec(2))
	require.NoError(t, j.WriteSnapshot(j.Pos(), writeState("two")))
	j.Append(rec(3))
	require.NoError(t, j.Wait(context.Background(), 3))
	require.NoError(t, j.Close())

	j2 := open(t, dir, FsyncBatch)
	snaps := j2.Snapshots()
	require.NoError(t, j2.Discard(snaps[0]))
	rest := j2.Snapshots()
	require.Equal(t, []Snapshot{snaps[1]}, rest)
	assert.Equal(t, []string{"record 2", "record 3"}, replayAll(t, j2, rest[0].Index))
	_, err := os.Stat(snaps[0].Path + ".bad")
	require.NoError(t, err, "the unreadable snapshot is kept aside")
	want := []Snapshot{{Index: snaps[0].Index, Path: snaps[0].Path + ".bad"}}
	assert.Equal(t, want, j2.SetAside())
	require.NoError(t, j2.Close())
	j3 := open(t, dir, FsyncBatch)
	assert.Equal(t, want, j3.SetAside(), "set aside before this Open")
	assert.Equal(t, rest, j3.Snapshots())
}

// TestFailStopsTheJournal: after Fail nothing more is written, waiters
// and snapshots get the failure, and a restart has what was written
// before it.
func TestFailStopsTheJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	require.NoError(t, j.Wait(context.Background(), j.Append(rec(1))))
	boom := errors.New("boom")
	j.Fail(boom, 0)
	i := j.Append(rec(2))
	err = j.Wait(context.Background(), i)
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, err, boom)
	require.ErrorIs(t, j.WriteSnapshot(j.Pos(), writeState("after")), ErrFailed)
	require.ErrorIs(t, j.Close(), ErrFailed)

	j2 := open(t, dir, FsyncBatch)
	assert.Equal(t, []string{"record 1"}, replayAll(t, j2, 0))
	assert.Empty(t, j2.Snapshots())
}

func TestParseFsync(t *testing.T) {
	for _, m := range []Fsync{FsyncBatch, FsyncAlways, FsyncNever} {
		got, err := ParseFsync(m.String())
		require.NoError(t, err)
		assert.Equal(t, m, got)
	}
	_, err := ParseFsync("sometimes")
	require.ErrorIs(t, err, engine.ErrInvalid)
}

func TestReplayStopsOnError(t *testing.T) {
	j := open(t, t.TempDir(), FsyncBatch)
	for i := 1; i <= 3; i++ {
		j.Append(rec(i))
	}
	require.NoError(t, j.Wait(context.Background(), 3))
	boom := errors.New("bad record")
	err := j.Replay(0, func(i uint64, r []byte) error {
		if bytes.Equal(r, rec(2)) {
			return boom
		}
		return nil
	})
	require.ErrorIs(t, err, boom)
	assert.Contains(t, err.Error(), "log record 2")
}

func TestCloseFlushesPending(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	for i := 1; i <= 500; i++ {
		j.Append(rec(i))
	}
	require.NoError(t, j.Close())
	j2 := open(t, dir, FsyncBatch)
	assert.Len(t, replayAll(t, j2, 0), 500)
}

// BenchmarkAppendWait: writers that each append a 200-byte record and wait
// for it to be durable, as the controller's requests do, alone and 16 at
// once (group commit: records/group says how many share an fsync).
func BenchmarkAppendWait(b *testing.B) {
	for _, fsync := range []Fsync{FsyncBatch, FsyncNever} {
		for _, writers := range []int{1, 16} {
			b.Run(fmt.Sprintf("fsync=%v/writers=%d", fsync, writers), func(b *testing.B) {
				j, err := Open(Config{Dir: b.TempDir(), Fsync: fsync})
				if err != nil {
					b.Fatal(err)
				}
				defer j.Close()
				rec := make([]byte, 200)
				var next, waited atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range writers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							t0 := time.Now()
							if err := j.Wait(context.Background(), j.Append(rec)); err != nil {
								b.Error(err)
								return
							}
							waited.Add(int64(time.Since(t0)))
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(waited.Load())/float64(b.N)/1e3, "wait_us")
				b.ReportMetric(float64(b.N)/float64(j.Stats().Groups), "records/group")
			})
		}
	}
}

const killChildEnv = "TQ_JOURNAL_KILL_CHILD"

// killChild appends records to the journal in dir (FsyncNever when dir
// ends in "never"), waits for each, prints its index, and waits to be
// killed.
func killChild(dir string) int {
	fsync := FsyncBatch
	if strings.HasSuffix(dir, "never") {
		fsync = FsyncNever
	}
	j, err := Open(Config{Dir: dir, Fsync: fsync})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for i := 1; i <= 100; i++ {
		if err := j.Wait(context.Background(), j.Append([]byte(fmt.Sprintf("record %d", i)))); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	fmt.Println("waited 100")
	select {}
}

// TestKilledProcessKeepsWaitedRecords: a record Wait returned for survives
// the process's SIGKILL, with FsyncNever too (the kernel has it). Pebble
// buffers an unsynced record until a 32 KiB block fills, so FsyncNever
// used to lose a killed process's last acknowledged records.
func TestKilledProcessKeepsWaitedRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a process")
	}
	for _, mode := range []string{"batch", "never"} {
		t.Run(mode, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), mode)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			line, err := bufio.NewReader(out).ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "waited 100\n", line)
			cmd.Process.Kill()
			cmd.Wait()

			j, err := Open(Config{Dir: dir})
			require.NoError(t, err)
			defer j.Close()
			var got []string
			require.NoError(t, j.Replay(0, func(_ uint64, b []byte) error {
				got = append(got, string(b))
				return nil
			}))
			require.Len(t, got, 100)
			assert.Equal(t, "record 100", got[99])
		})
	}
}

// TestFailUndoesDurableRecords: a failure that a restart will undo from a
// record on fails waits for that record and later ones even though they
// are durable; earlier ones stay acknowledged.
func TestFailUndoesDurableRecords(t *testing.T) {
	j, err := Open(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	ctx := context.Background()
	first := j.Append(rec(1))
	require.NoError(t, j.Wait(ctx, first))
	second := j.Append(rec(2))
	require.NoError(t, j.Wait(ctx, second))
	boom := errors.New("boom")
	j.Fail(boom, second)
	require.NoError(t, j.Wait(ctx, first), "a record before the undone one")
	err = j.Wait(ctx, second)
	require.ErrorIs(t, err, ErrFailed, "the undone record, durable as it is")
	require.ErrorIs(t, err, boom)
	require.ErrorIs(t, j.Close(), ErrFailed)
}

// MkdirAll makes every missing directory of a path (and syncs their
// parents: not observable without a crash), and leaves existing ones be.
func TestMkdirAllMakesTheMissingDirectories(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "c")
	require.NoError(t, MkdirAll(dir))
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.True(t, st.IsDir())
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	require.NoError(t, MkdirAll(dir), "again")
	f := filepath.Join(base, "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	require.Error(t, MkdirAll(filepath.Join(f, "d")), "under a file")
}

// TestReplayPastALostSnapshotMustReachIt: when the newest snapshot is set
// aside as unreadable, the one before it with every record since must
// give its state; a log that ends before the set-aside snapshot's index
// has lost acknowledged changes, and replay says so instead of returning
// a shorter history (whose indexes the journal would then skip past,
// failing only some later start with a gap). It still says so at the
// start after, once the snapshot is renamed .bad.
func TestReplayPastALostSnapshotMustReachIt(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Config{Dir: dir, Fsync: FsyncNever})
	require.NoError(t, err)
	for i := 1; i <= 10; i++ {
		j.Append(rec(i))
	}
	require.NoError(t, j.WriteSnapshot(j.Pos(), writeState("state@10")))
	for i := 11; i <= 20; i++ {
		j.Append(rec(i))
	}
	require.NoError(t, j.WriteSnapshot(j.Pos(), writeState("state@20")))
	require.NoError(t, j.Close())

	// The log loses its last records, as a machine's crash loses what
	// FsyncNever had not synced (the snapshot files are synced). The mark
	// of acknowledged records the other modes keep did not stop the
	// first start replaying past such a loss either: Open counts the
	// newest snapshot's index as logged.
	db, err := pebble.Open(filepath.Join(dir, "log"), &pebble.Options{Logger: quiet{}, FormatMajorVersion: logFormat})
	require.NoError(t, err)
	require.NoError(t, db.DeleteRange(key(16), key(21), pebble.Sync))
	require.NoError(t, db.Close())

	j2 := open(t, dir, FsyncNever)
	snaps := j2.Snapshots()
	require.Len(t, snaps, 2)
	require.NoError(t, j2.Discard(snaps[0])) // unreadable, as recover finds it
	var got []uint64
	err = j2.Replay(snaps[1].Index, func(i uint64, _ []byte) error { got = append(got, i); return nil })
	require.ErrorIs(t, err, engine.ErrCorrupt, "replayed %v: the state through record 20 is lost", got)
	assert.Contains(t, err.Error(), filepath.Base(snaps[0].Path), "the error names the snapshot set aside")
	// The file to remove is the one set aside: it named the snapshot's
	// old path, gone with the rename.
	assert.Contains(t, err.Error(), "(remove "+snaps[0].Path+badSuffix+" to start without them)")
	require.NoError(t, j2.Close())

	j3 := open(t, dir, FsyncNever)
	require.Equal(t, []Snapshot{snaps[1]}, j3.Snapshots())
	err = j3.Replay(snaps[1].Index, func(uint64, []byte) error { return nil })
	require.ErrorIs(t, err, engine.ErrCorrupt, "a second start is refused too")
}
