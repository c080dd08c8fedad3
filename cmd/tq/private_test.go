package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/linger"
	"github.com/tqgo/tq/wire"
)

// TestServeKeepsItsFilesPrivate holds a default tq serve to the README's
// Security section: with no --socket-dir its sockets go in
// $TMPDIR/tq-$UID, made 0700, and each of them — the controller's, the
// unit's and the unit's fd socket — is 0600; the data directory it makes
// is 0700 and holds the token (32 random bytes in hex, 0600), the
// controller's state (controller/) and checkpoints (checkpoints/). To
// change the token, delete the file and restart: the servers then make a
// new one, and a client with the old one is refused.
func TestServeKeepsItsFilesPrivate(t *testing.T) {
	bin := tqBinary(t)
	unsetEnv(t, auth.EnvToken)
	// Short, so that the default socket paths fit a unix address.
	tmp, err := os.MkdirTemp("", "tqp")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	data := filepath.Join(t.TempDir(), "state", "tq") // tq serve makes it
	args := []string{"--listen", "127.0.0.1:0", "--units", "1", "--capacity", "16MiB"}
	p := startServeIn(t, data, nil, bin, args...)

	sockDir := filepath.Join(tmp, fmt.Sprintf("tq-%d", os.Getuid()))
	mode := func(path string) os.FileMode {
		t.Helper()
		fi, err := os.Lstat(path)
		require.NoError(t, err)
		return fi.Mode().Perm()
	}
	assert.Equal(t, os.FileMode(0o700), mode(sockDir), "the socket directory")
	var socks []string
	for _, a := range append(p.addrs, p.units[0]...) {
		for _, scheme := range []string{"unix://", "shm://"} {
			if path, ok := strings.CutPrefix(a, scheme); ok {
				socks = append(socks, path)
			}
		}
	}
	require.Len(t, socks, 3, "the controller's, the unit's and its fd socket: %v %v", p.addrs, p.units)
	for _, s := range socks {
		assert.Equal(t, sockDir, filepath.Dir(s), "%s is not in the default socket directory", s)
		assert.Equal(t, os.FileMode(0o600), mode(s), s)
	}

	assert.Equal(t, os.FileMode(0o700), mode(data), "the data directory")
	tokFile := filepath.Join(data, auth.TokenFile)
	assert.Equal(t, os.FileMode(0o600), mode(tokFile), "the token file")
	old := p.token(t)
	assert.Regexp(t, regexp.MustCompile(`^[0-9a-f]{64}$`), old, "32 random bytes in hex")
	out, err := runTQ(t, p, bin, "checkpoint", "save", p.addr("unix"), "ck")
	require.NoError(t, err, out)
	for _, sub := range []string{"controller", "checkpoints"} {
		fi, err := os.Lstat(filepath.Join(data, sub))
		require.NoError(t, err, "the data directory holds %s/", sub)
		assert.True(t, fi.IsDir(), sub)
	}
	p.stop(t)

	require.NoError(t, os.Remove(tokFile))
	p = startServeIn(t, data, nil, bin, args...)
	fresh := p.token(t)
	assert.NotEqual(t, old, fresh, "a restart without the token file makes a new token")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, scheme := range []string{"tcp", "unix"} {
		_, err = client.Connect(ctx, p.addr(scheme), client.ConnectConfig{Token: old, Name: "old-token"})
		require.ErrorIs(t, err, wire.ErrUnauthenticated, "the old token over %s", scheme)
	}
	c, err := client.Connect(ctx, p.addr("tcp"), client.ConnectConfig{Token: fresh, Name: "new-token"})
	require.NoError(t, err)
	c.Close()
	p.stop(t)
}

// The limits the README's Security section gives misbehaving peers are the
// ones tq serve's servers use: each phrase, made from the constant, is in
// the section (white space folded).
func TestReadmeSecurityStatesTheLimits(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, sec, ok := strings.Cut(string(b), "\n## Security\n")
	require.True(t, ok, "README.md has no Security section")
	sec, _, _ = strings.Cut(sec, "\n## ")
	sec = strings.Join(strings.Fields(sec), " ")
	for _, phrase := range []string{
		fmt.Sprintf("a small handshake (%d KiB, within %d s)", wire.MaxHelloLen>>10, int(wire.DefaultHandshakeTimeout/time.Second)),
		fmt.Sprintf("each frame must arrive within %d s", int(wire.DefaultFrameTimeout/time.Second)),
		fmt.Sprintf("a per-connection (%d MiB) and a server-wide (%d GiB) bound", wire.DefaultMaxConnBuffered>>20, wire.DefaultMaxBuffered>>30),
		fmt.Sprintf("at most %d connections are held", wire.DefaultMaxConns),
		fmt.Sprintf("for up to %d s before it closes", int(linger.Time/time.Second)),
	} {
		assert.Contains(t, sec, phrase)
	}
}
