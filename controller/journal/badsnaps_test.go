package journal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSetAsideSnapshotsAreBounded: a controller that sets a snapshot
// aside at every start (a bug that makes its snapshots unreadable, say)
// keeps only the newest keepSetAside of them, and says which it removed.
// Every .bad file was kept for ever: six starts left six, a disk filled
// one snapshot at a time.
func TestSetAsideSnapshotsAreBounded(t *testing.T) {
	dir := t.TempDir()
	var logs logLines
	var bad []string // newest last
	for i := 1; i <= 6; i++ {
		j, err := Open(Config{Dir: dir, Logf: logs.logf})
		require.NoError(t, err)
		if s := j.Snapshots(); len(s) > 0 {
			require.NoError(t, j.Discard(s[0]), "start %d", i)
			bad = append(bad, s[0].Path+badSuffix)
		}
		j.Append(rec(i))
		require.NoError(t, j.Wait(context.Background(), j.Last()))
		require.NoError(t, j.WriteSnapshot(j.Pos(), writeState(fmt.Sprint(i))))
		require.NoError(t, j.Close())
	}
	require.Len(t, bad, 5)
	got, err := filepath.Glob(filepath.Join(dir, "*"+badSuffix))
	require.NoError(t, err)
	assert.ElementsMatch(t, bad[2:], got, "the newest %d are kept", keepSetAside)
	for _, b := range bad[:2] {
		_, err := os.Stat(b)
		require.ErrorIs(t, err, os.ErrNotExist, "%s is removed", b)
		assert.Contains(t, logs.all(), filepath.Base(b), "a line names %s", b)
	}
	j, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	defer j.Close()
	assert.Len(t, j.SetAside(), keepSetAside)
}
