package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// TestRestoreOfAMissingCheckpointFailsBeforeServing: tq serve --restore
// with a checkpoint that is not there, or a name that is no checkpoint
// name, fails at once, before the controller listens, with an error that
// names the checkpoint and the directory it was looked for in. Before,
// the controller listened, waited for storage units (up to 30 s), and
// only then failed the load.
func TestRestoreOfAMissingCheckpointFailsBeforeServing(t *testing.T) {
	for _, tc := range []struct {
		name, restore string
		want          []string // in the error
	}{
		{"missing", "nope", []string{`"nope"`, "checkpoints"}},
		{"not a checkpoint", "empty", []string{`"empty"`, "checkpoints", "state.pb"}},
		{"bad name", "../x", []string{`"../x"`, "checkpoint name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, socks := t.TempDir(), t.TempDir()
			if err := os.MkdirAll(filepath.Join(data, "checkpoints", "empty"), 0o700); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out strings.Builder
			start := time.Now()
			err := serve(ctx, []string{"--insecure", "--socket-dir", socks, "--data-dir", data, "--listen", "", "--role", "controller", "--restore", tc.restore}, &out, &strings.Builder{})
			if err == nil {
				t.Fatal("tq serve --restore of no checkpoint: got nil error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to name %s", err, w)
				}
			}
			if strings.Contains(out.String(), "controller on") {
				t.Errorf("the controller listened before the restore failed; output:\n%s", out.String())
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("failed after %v, want at once", d)
			}
		})
	}
}

// durability.md, "Checkpoints": a checkpoint damaged past its header (a
// byte of state.pb, or of a cell in data.bin) fails tq serve --restore
// --restore-force with an error naming the file, before it serves, and
// replaces nothing: the next start without the flag has every key it
// acknowledged, those put after the checkpoint too.
func TestRestoreOfADamagedCheckpointKeepsTheState(t *testing.T) {
	bin := tqBinary(t)
	for _, tc := range []struct{ file, want string }{
		{"state.pb", "state.pb: "},
		{"data.bin", "data.bin: the cell at byte "},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, socks := t.TempDir(), t.TempDir()
			args := []string{"--listen", "", "--socket-dir", socks, "--capacity", "16MiB"}
			ctrl := startServeIn(t, data, nil, bin, args...)
			addr := ctrl.addr("unix")
			kv := kvapi.New(connectTo(t, ctrl, addr))
			putInt(t, kv, "p", "before", 1)
			out, err := runTQ(t, ctrl, bin, "checkpoint", "save", addr, "c0")
			require.NoError(t, err, out)
			putInt(t, kv, "p", "after", 2)
			ctrl.stop(t)

			path := filepath.Join(data, "checkpoints", "c0", tc.file)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			b[len(b)/2] ^= 0x10
			require.NoError(t, os.WriteFile(path, b, 0o600))

			var stderr syncBuilder
			p, err := spawnServe(data, nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin, append(args, "--restore", "c0", "--restore-force")...)
			if err == nil {
				p.kill()
				t.Fatal("tq serve restored a damaged checkpoint")
			}
			assert.Contains(t, stderr.String(), tc.want)
			assert.Contains(t, stderr.String(), engine.ErrCorrupt.Error())

			ctrl = startServeIn(t, data, nil, bin, args...)
			kv = kvapi.New(connectTo(t, ctrl, ctrl.addr("unix")))
			all, err := kv.List(t.Context(), "p")
			require.NoError(t, err)
			var keys []string
			for _, e := range all["p"] {
				keys = append(keys, e.Key)
			}
			assert.Equal(t, []string{"before", "after"}, keys, "the keys acknowledged before the refused restore")
		})
	}
}
