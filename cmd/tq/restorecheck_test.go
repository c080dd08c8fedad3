package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
