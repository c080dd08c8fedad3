package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// syncBuilder is a strings.Builder a process's stderr copier may write
// while the test reads it.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// durability.md, "The log": a killed controller whose log lost its tail
// after the kill (cut short, as a disk or a copy may leave it: read as a
// torn tail) does not start without the records it acknowledged. The
// start fails, naming the records lost and the acked file, before it
// serves, and so does the next; removing acked starts with what is left:
// the keys whose records came before the cut, with their tags, and none
// of the others.
func TestKilledControllerMissingAcknowledgedRecords(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	args := []string{"--listen", "", "--socket-dir", socks, "--capacity", "16MiB"}
	connect := func(p *serveProc) *kvapi.KV {
		c, err := client.Connect(t.Context(), "unix://"+filepath.Join(socks, "controller.sock"),
			client.ConnectConfig{Token: p.token(t), Name: "lostlog", WaitForUnits: true})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return kvapi.New(c)
	}
	ctrl := startServeIn(t, data, nil, bin, args...)
	kv := connect(ctrl)
	const n = 200
	key := func(i int) string { return fmt.Sprintf("k%03d", i) }
	for i := range n {
		_, err := kv.Put(t.Context(), "p", key(i), nil, engine.Tags{"i": i, "pad": strings.Repeat("x", 64)})
		require.NoError(t, err)
	}
	ctrl.kill()

	logs, err := filepath.Glob(filepath.Join(data, "controller", "log", "*.log"))
	require.NoError(t, err)
	var wal string
	var size int64
	for _, l := range logs { // zero-padded numbers: sorted
		if fi, err := os.Stat(l); err == nil && fi.Size() > 0 {
			wal, size = l, fi.Size()
		}
	}
	require.NotEmpty(t, wal, "a write-ahead file with records")
	require.Greater(t, size, int64(4000))
	require.NoError(t, os.Truncate(wal, size-2000))

	acked := filepath.Join(data, "controller", "acked")
	for range 2 { // refusing once does not make the loss the new normal
		var stderr syncBuilder
		p, err := spawnServe(data, nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin, args...)
		if err == nil {
			p.kill()
			t.Fatal("tq serve started on a log that lost acknowledged records")
		}
		out := stderr.String()
		assert.Regexp(t, `records \d+ to \d+ are lost`, out)
		assert.Contains(t, out, acked, "names the mark to remove")
		assert.Contains(t, out, engine.ErrCorrupt.Error())
		assert.NotContains(t, out, "panic")
	}

	require.NoError(t, os.Remove(acked))
	ctrl = startServeIn(t, data, nil, bin, args...)
	kv = connect(ctrl)
	all, err := kv.List(t.Context(), "p")
	require.NoError(t, err)
	got := all["p"]
	require.Less(t, len(got), n, "the cut took acknowledged records")
	require.Greater(t, len(got), n/2)
	for i, e := range got {
		require.Equal(t, key(i), e.Key, "the keys kept are those before the cut, in order")
		assert.EqualValues(t, i, e.Tags["i"])
	}
	// What is left takes writes and survives the next restart.
	_, err = kv.Put(t.Context(), "p", "after", nil, engine.Tags{"i": -1})
	require.NoError(t, err)
	ctrl.kill()
	ctrl = startServeIn(t, data, nil, bin, args...)
	kv = connect(ctrl)
	all, err = kv.List(t.Context(), "p")
	require.NoError(t, err)
	require.Len(t, all["p"], len(got)+1)
	assert.Equal(t, "after", all["p"][len(got)].Key)
}
