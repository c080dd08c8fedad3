package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/kvapi"
)

// redisCLI runs redis-cli against p's --resp port as the README shows it:
// the token in $REDISCLI_AUTH, --user default, commands from args or, when
// stdin is given, one per line on one connection. It answers the output
// and whether redis-cli exited 0.
func redisCLI(t *testing.T, cli string, p *serveProc, tok string, stdin string, args ...string) (string, bool) {
	t.Helper()
	_, port := hostPort(t, p.resp)
	cmd := exec.Command(cli, append([]string{"-p", port, "--user", "default"}, args...)...)
	cmd.Env = append(os.Environ(), "REDISCLI_AUTH="+tok)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimRight(string(out), "\n"), err == nil
}

// TestRESPReadmeExamples runs the README's "Redis clients" lines as they
// are written (token in REDISCLI_AUTH, --user default, no -h: 127.0.0.1),
// and holds where they land to the README: SET to the field value of the
// connection's partition (--resp-partition, default "default"), {p}k to
// partition p, SELECT to another partition.
func TestRESPReadmeExamples(t *testing.T) {
	cli := needTool(t, "redis-cli")
	bin := tqBinary(t)
	p, tok := startRESP(t, bin)
	require.True(t, strings.HasPrefix(p.resp, "127.0.0.1:"), "%s", p.resp)

	out, ok := redisCLI(t, cli, p, tok, "", "SET", "greeting", "hello")
	require.True(t, ok, "%s", out)
	assert.Equal(t, "OK", out)
	out, ok = redisCLI(t, cli, p, tok, "", "HSET", "{rollouts}s1", "prompt", "2+2?", "reward", "1.0")
	require.True(t, ok, "%s", out)
	assert.Equal(t, "2", out)
	// One connection: SELECT moves it to the partition rollouts.
	out, ok = redisCLI(t, cli, p, tok, "GET greeting\nSELECT rollouts\nHGET s1 prompt\nGET greeting\n")
	require.True(t, ok, "%s", out)
	assert.Equal(t, "hello\nOK\n2+2?", out, "GET in default, then (the empty line of a nil) nothing of greeting in rollouts")

	kv := kvapi.New(connectTo(t, p, p.addr("unix")))
	ctx := context.Background()
	b, err := kv.BatchGetCopy(ctx, "default", []string{"greeting"}, "value")
	require.NoError(t, err)
	assert.Equal(t, "hello", b.Col("value").String(0))
	b, err = kv.BatchGetCopy(ctx, "rollouts", []string{"s1"}, "prompt", "reward")
	require.NoError(t, err)
	assert.Equal(t, "2+2?", b.Col("prompt").String(0))
	assert.Equal(t, "1.0", b.Col("reward").String(0))
}

// TestRESPPartitionFlag: with --resp-partition rp a connection starts in
// rp; SELECT default reaches the partition "default".
func TestRESPPartitionFlag(t *testing.T) {
	cli := needTool(t, "redis-cli")
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--resp-partition", "rp")
	out, ok := redisCLI(t, cli, p, tok, "SET k in-rp\nSELECT default\nSET k in-default\n")
	require.True(t, ok, "%s", out)
	kv := kvapi.New(connectTo(t, p, p.addr("unix")))
	for part, want := range map[string]string{"rp": "in-rp", "default": "in-default"} {
		b, err := kv.BatchGetCopy(context.Background(), part, []string{"k"}, "value")
		require.NoError(t, err, "partition %s", part)
		assert.Equal(t, want, b.Col("value").String(0), "partition %s", part)
	}
}

// TestRESPMaxPartitions: tq serve --max-partitions 2 refuses a RESP write
// that would create a third partition, with an error naming the limit,
// until FLUSHDB clears one; a negative limit is none.
func TestRESPMaxPartitions(t *testing.T) {
	cli := needTool(t, "redis-cli")
	bin := tqBinary(t)
	p, tok := startRESP(t, bin, "--max-partitions", "2")
	for _, k := range []string{"{a}k", "{b}k"} {
		out, ok := redisCLI(t, cli, p, tok, "", "SET", k, "v")
		require.True(t, ok, "%s", out)
		require.Equal(t, "OK", out, "SET %s", k)
	}
	out, _ := redisCLI(t, cli, p, tok, "", "SET", "{c}k", "v")
	assert.Contains(t, out, "the limit is 2", "SET {c}k past --max-partitions 2")
	out, _ = redisCLI(t, cli, p, tok, "", "HSET", "{c}k", "f", "v")
	assert.Contains(t, out, "the limit is 2", "HSET {c}k past --max-partitions 2")
	out, ok := redisCLI(t, cli, p, tok, "SELECT b\nFLUSHDB\nSET {c}k v\n")
	require.True(t, ok, "%s", out)
	assert.Equal(t, "OK\nOK\nOK", out, "clearing b made room for c")

	p, tok = startRESP(t, bin, "--max-partitions", "-1")
	var in bytes.Buffer
	for i := range 5 {
		in.WriteString("SET {p" + string(rune('0'+i)) + "}k v\n")
	}
	out, ok = redisCLI(t, cli, p, tok, in.String())
	require.True(t, ok, "%s", out)
	assert.Equal(t, strings.Repeat("OK\n", 4)+"OK", out, "no limit")
}

// TestRESPSocketLeftByAKilledServe: the --resp-socket a tq serve killed
// with SIGKILL leaves behind is replaced by the next tq serve on the
// same path, which redis-cli -s then reaches.
func TestRESPSocketLeftByAKilledServe(t *testing.T) {
	cli := needTool(t, "redis-cli")
	bin := tqBinary(t)
	sock := filepath.Join(t.TempDir(), "tq-resp.sock")
	p, _ := startRESP(t, bin, "--resp-socket", sock)
	p.kill()
	fi, err := os.Lstat(sock)
	require.NoError(t, err, "SIGKILL left no socket to replace")
	require.Equal(t, os.ModeSocket, fi.Mode().Type())

	p, tok := startRESP(t, bin, "--resp-socket", sock)
	require.Equal(t, sock, p.respSock)
	cmd := exec.Command(cli, "-s", sock, "--user", "default", "PING")
	cmd.Env = append(os.Environ(), "REDISCLI_AUTH="+tok)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "PONG\n", string(out))

	// wire/resp.md: the socket is mode 0600, and asks for AUTH as TCP does.
	fi, err = os.Stat(sock)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "--resp-socket's mode")
	out, _ = exec.Command(cli, "-s", sock, "GET", "k").CombinedOutput()
	assert.Contains(t, string(out), "NOAUTH", "a command before AUTH over the socket")
}
