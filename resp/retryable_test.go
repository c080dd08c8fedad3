package resp

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestNotNowIsRetryable: a SET refused because the endpoint's storage
// units are shutting down (they take no new writes: tq serve's shutdown
// after the endpoint drained, an embedding program's) changed nothing and
// may succeed again later. It answers LOADING, which go-redis retries and
// redis-py raises as BusyLoadingError, a ConnectionError its Retry
// retries; before, it answered "ERR ... engine: closed", which neither
// retries. The message still names what was wrong.
func TestNotNowIsRetryable(t *testing.T) {
	for _, loops := range []int{-1, 1} {
		e := newEndpoint(t, Config{Loops: loops})
		ctx := context.Background()
		rc := e.client(t, &redis.Options{MaxRetries: -1})
		require.NoError(t, rc.Set(ctx, "before", "x", 0).Err())
		for _, u := range e.e.Units {
			u.StopReserving()
		}
		err := rc.Set(ctx, "k", "v", 0).Err()
		require.Error(t, err)
		assert.True(t, strings.HasPrefix(err.Error(), "LOADING "), "loops=%d: %v", loops, err)
		assert.Contains(t, err.Error(), "engine: closed")
		// Reads go on.
		got, err := rc.Get(ctx, "before").Result()
		require.NoError(t, err)
		assert.Equal(t, "x", got)
	}
}

// TestUnreachableIsRetryableOnlyWhereARepeatAnswersAlike: a command that
// failed because part of the cluster could not be reached (the
// controller, another process's unit) may have been made. A command
// whose answer is the same however often it ran answers LOADING, which
// clients send again; one whose answer says what it changed (a count, a
// compare's outcome) answers ERR: sent again after it was made, a
// TQ.TAGCAS would answer a mismatch and an HSET a count of 0, and the
// client would take that for the outcome. Before, every command answered
// LOADING, and go-redis sent TQ.TAGCAS again by itself. A refusal that
// changed nothing (engine.ErrClosed) answers LOADING for all.
func TestUnreachableIsRetryableOnlyWhereARepeatAnswersAlike(t *testing.T) {
	unreachable := fmt.Errorf("unit 2 at tcp://10.0.0.2:7371: %w", engine.ErrUnavailable)
	closed := fmt.Errorf("unit 1: %w", engine.ErrClosed)
	for name, want := range map[string]string{
		"GET": "LOADING", "SET": "LOADING", "MGET": "LOADING", "MSET": "LOADING", "HGET": "LOADING",
		"HMSET": "LOADING", "HGETALL": "LOADING", "EXISTS": "LOADING", "TQ.TAG": "LOADING", "TQ.TAGS": "LOADING",
		"DEL": "ERR", "UNLINK": "ERR", "HSET": "ERR", "HDEL": "ERR", "TQ.TAGDEL": "ERR", "TQ.TAGCAS": "ERR",
	} {
		cmd, ok := commands[name]
		require.True(t, ok, name)
		c := &conn{once: cmd.once}
		c.writeErr(unreachable)
		assert.Equal(t, "-"+want+" "+unreachable.Error()+"\r\n", string(c.out), "%s, unreachable", name)
		c = &conn{once: cmd.once}
		c.writeErr(closed)
		assert.Equal(t, "-LOADING "+closed.Error()+"\r\n", string(c.out), "%s, closed", name)
	}
}

// TestDispatchSetsOnce: the flag writeErr reads is the running command's,
// set by dispatch before every command, so a command that answers what
// it changed never inherits a repeatable one's flag, nor the other way
// round.
func TestDispatchSetsOnce(t *testing.T) {
	e := newEndpoint(t, Config{Loops: -1})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, b)
	c := e.srv.newConn(a)
	for _, args := range [][]string{{"DEL", "k"}, {"GET", "k"}, {"HDEL", "k", "f"}, {"PING"}, {"TQ.TAGCAS", "k", "s", "a", "b"}, {"SET", "k", "v"}} {
		want := commands[args[0]].once
		c.once = !want
		bs := make([][]byte, len(args))
		for i, a := range args {
			bs[i] = []byte(a)
		}
		c.dispatch(bs)
		assert.Equal(t, want, c.once, "%v", args)
	}
}
