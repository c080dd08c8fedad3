package resp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNamesTQCannotHold checks that every command given a key, field or
// partition TQ cannot name (empty, or not UTF-8, where Redis takes any
// bytes) answers an error that says why, whether it reads or writes:
// before, GET and EXISTS answered nil and 0 where SET, TYPE and HSET
// answered errors.
func TestNamesTQCannotHold(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, key := range []string{"\xff", "", "{p}", "{p\xff}k"} {
		for _, cmd := range [][]any{
			{"SET", key, "v"}, {"GET", key}, {"EXISTS", key}, {"EXISTS", "ok", key}, {"DEL", key}, {"TYPE", key},
			{"MSET", key, "v"}, {"MGET", "ok", key}, {"HSET", key, "f", "v"}, {"HMSET", key, "f", "v"},
			{"HGET", key, "f"}, {"HMGET", key, "f"}, {"HGETALL", key}, {"HDEL", key, "f"}, {"HKEYS", key},
			{"HLEN", key}, {"HEXISTS", key, "f"}, {"TQ.TAG", key, "t", "v"}, {"TQ.TAGS", key},
			{"TQ.TAGDEL", key, "t"}, {"TQ.TAGCAS", key, "t", "ABSENT", "NEW", "v"},
		} {
			err := rc.Do(ctx, cmd...).Err()
			require.Error(t, err, "%q", cmd)
			assert.Regexp(t, `^ERR .*(empty key|not valid UTF-8)`, err.Error(), "%q", cmd)
		}
	}
	for _, field := range []string{"\xff", ""} {
		for _, cmd := range [][]any{
			{"HSET", "k", field, "v"}, {"HMSET", "k", field, "v"}, {"HGET", "k", field},
			{"HMGET", "k", "f", field}, {"HDEL", "k", field}, {"HEXISTS", "k", field},
		} {
			err := rc.Do(ctx, cmd...).Err()
			require.Error(t, err, "%q", cmd)
			assert.Regexp(t, `^ERR (empty field|field .* is not valid UTF-8)`, err.Error(), "%q", cmd)
		}
	}
	for _, cmd := range [][]any{{"SELECT", "\xff"}, {"SELECT", ""}, {"TQ.PARTITION", "\xff"}, {"TQ.PARTITION", ""}} {
		err := rc.Do(ctx, cmd...).Err()
		require.Error(t, err, "%q", cmd)
		assert.Regexp(t, `(empty partition|not valid UTF-8)`, err.Error(), "%q", cmd)
	}
	// The connection goes on in the partition it had.
	require.NoError(t, rc.Set(ctx, "ok", "v", 0).Err())
	assert.Equal(t, "v", rc.Get(ctx, "ok").Val())
}
