package main

// Claims of the README's "A cluster of processes" section that no other
// test held.

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/internal/auth"
)

// A bare `tq serve` is, as the README's first example says, a controller
// and two units on 127.0.0.1:7370 and ${TMPDIR:-/tmp}/tq-$UID; units
// heartbeat every second and a unit waits 2 minutes for its controller.
func TestServeDefaultsAreTheReadmes(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	unsetEnv(t, auth.EnvToken)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var out, errOut strings.Builder
	require.NoError(t, serve(t.Context(), []string{"--check-config"}, &out, &errOut), errOut.String())
	for _, line := range []string{
		"role: all",
		"listen: 127.0.0.1:7370",
		"units: 2",
		fmt.Sprintf("socket_dir: %s/tq-%d", tmp, os.Getuid()),
		"heartbeat_interval: 1s",
		"controller_wait: 2m0s",
		"shm_quarantine: 30s",
	} {
		assert.Contains(t, out.String(), "\n"+line+"\n")
	}
}
