package main

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// README's tags section: a change cursor is still good after a
// controller with a data directory restarts (here, killed with SIGKILL),
// and after an in-memory controller restarts the answer says Reset and
// lists every key it now holds.
func TestChangeCursorAcrossKilledController(t *testing.T) {
	bin := tqBinary(t)
	for _, tc := range []struct {
		name    string
		args    []string
		durable bool
	}{
		{"durable", nil, true},
		{"in-memory", []string{"--in-memory"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			data, socks := t.TempDir(), t.TempDir()
			args := append([]string{"--listen", "", "--socket-dir", socks, "--capacity", "16MiB"}, tc.args...)
			ctrl := startServeIn(t, data, nil, bin, args...)
			c, err := client.Connect(ctx, "unix://"+filepath.Join(socks, "controller.sock"),
				client.ConnectConfig{Token: ctrl.token(t), Name: "changes", WaitForUnits: true})
			require.NoError(t, err)
			defer c.Close()
			kv := kvapi.New(c)

			_, err = kv.BatchPut(ctx, "prompts", []string{"a", "b"}, nil, []engine.Tags{{"status": "pending"}, {"status": "pending", "worker": 3}})
			require.NoError(t, err)
			cs, err := kv.Changes(ctx, "prompts", nil)
			require.NoError(t, err)
			require.Len(t, cs.Changes, 2)
			ok, _, err := kv.CompareAndSetTag(ctx, "prompts", "a", "status", "pending", "running")
			require.NoError(t, err)
			require.True(t, ok)
			_, err = kv.DeleteTags(ctx, "prompts", []string{"b"}, "worker")
			require.NoError(t, err)

			ctrl.kill()
			startServeIn(t, data, nil, bin, args...)
			if !tc.durable {
				// Something to list anew: the restarted controller holds nothing.
				_, err = kv.Put(ctx, "prompts", "c", nil, engine.Tags{"status": "pending"})
				require.NoError(t, err)
			}
			next, err := kv.Changes(ctx, "prompts", cs.Cursor)
			require.NoError(t, err)
			if tc.durable {
				assert.False(t, next.Reset, "the cursor is still good")
				assert.Equal(t, []kvapi.Change{{Key: "a", Tags: engine.Tags{"status": "running"}}, {Key: "b", Tags: engine.Tags{"status": "pending"}}}, next.Changes)
			} else {
				assert.True(t, next.Reset, "an in-memory controller restarted")
				assert.Equal(t, []kvapi.Change{{Key: "c", Tags: engine.Tags{"status": "pending"}}}, next.Changes)
			}
		})
	}
}
