package resp

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// MULTI queues the commands up to EXEC and runs them then, in order, as
// redis-py's default pipeline() (transaction=True) and go-redis's
// TxPipelined expect: +OK, +QUEUED for each, and EXEC's array of their
// replies. A command refused as it is queued (unknown, wrong arity) makes
// EXEC answer EXECABORT and run nothing, as Redis does; DISCARD drops the
// queue. TQ did not know MULTI or EXEC: it answered both "unknown
// command", which the clients raise as the pipeline's failure, yet it
// had run every command between them.
func TestMultiExec(t *testing.T) {
	e := newEndpoint(t, Config{})
	c, err := dialRaw(e.addr)
	require.NoError(t, err)
	defer c.Close()
	send := func(cmds ...[]string) []string {
		var b strings.Builder
		for _, args := range cmds {
			fmt.Fprintf(&b, "*%d\r\n", len(args))
			for _, a := range args {
				fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
			}
		}
		_, err := c.Write([]byte(b.String()))
		require.NoError(t, err)
		var replies []string
		for range cmds {
			var out strings.Builder
			require.NoError(t, c.reply(&out))
			replies = append(replies, out.String())
		}
		return replies
	}
	got := send([]string{"MULTI"}, []string{"SET", "k", "v"}, []string{"HSET", "h", "f", "1"}, []string{"GET", "k"}, []string{"EXEC"})
	assert.Equal(t, []string{"+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "+QUEUED\r\n", "*3\r\n+OK\r\n:1\r\n$1\r\nv\r\n"}, got)

	got = send([]string{"MULTI"}, []string{"SET", "x", "1"}, []string{"NOSUCH"}, []string{"EXEC"}, []string{"EXISTS", "x"})
	assert.Equal(t, "+QUEUED\r\n", got[1])
	assert.True(t, strings.HasPrefix(got[2], "-ERR unknown command"), got[2])
	assert.True(t, strings.HasPrefix(got[3], "-EXECABORT"), got[3])
	assert.Equal(t, ":0\r\n", got[4], "nothing of an aborted transaction ran")

	got = send([]string{"MULTI"}, []string{"SET", "y", "1"}, []string{"DISCARD"}, []string{"EXISTS", "y"}, []string{"EXEC"}, []string{"DISCARD"})
	assert.Equal(t, []string{"+OK\r\n", "+QUEUED\r\n", "+OK\r\n", ":0\r\n", "-ERR EXEC without MULTI\r\n", "-ERR DISCARD without MULTI\r\n"}, got)

	got = send([]string{"MULTI"}, []string{"MULTI"}, []string{"EXEC"})
	assert.Equal(t, []string{"+OK\r\n", "-ERR MULTI calls can not be nested\r\n", "*0\r\n"}, got, "a nested MULTI leaves the transaction as it was")

	ctx := context.Background()
	rc := e.client(t, nil)
	cmds, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "k2", "v2", 0)
		p.HSet(ctx, "h2", "f", "x")
		p.Get(ctx, "k2")
		return nil
	})
	require.NoError(t, err, "go-redis TxPipelined")
	require.Len(t, cmds, 3)
	assert.Equal(t, "v2", cmds[2].(*redis.StringCmd).Val())
}

// TestMultiQueueCountsItsArguments checks that what a MULTI queues is
// bounded by the memory it holds, not by its arguments' bytes alone:
// before, a command of many empty arguments counted nothing against
// the 64 MiB bound while each argument held a slice of 24 bytes, so one
// connection queuing such commands grew without bound.
func TestMultiQueueCountsItsArguments(t *testing.T) {
	e := newEndpoint(t, Config{Loops: -1})
	nc, rr := e.raw(t)
	const perCommand, commands = 100000, 40 // 96 MB of slices
	var cmd strings.Builder
	fmt.Fprintf(&cmd, "*%d\r\n$4\r\nPING\r\n", perCommand+1)
	cmd.WriteString(strings.Repeat("$0\r\n\r\n", perCommand))
	go func() {
		io.WriteString(nc, "*1\r\n$5\r\nMULTI\r\n")
		for range commands {
			if _, err := io.WriteString(nc, cmd.String()); err != nil {
				return
			}
		}
	}()
	require.Equal(t, "+OK", rr.line(t))
	for i := range commands {
		line := rr.line(t)
		if line != "+QUEUED" {
			assert.Contains(t, line, "-ERR a MULTI transaction of more than 67108864 bytes", "command %d", i)
			return
		}
	}
	t.Fatalf("%d commands of %d empty arguments each were all queued", commands, perCommand)
}
