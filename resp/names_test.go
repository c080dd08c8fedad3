package resp

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
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

// A key listed by KEYS, SCAN, TQ.LIST or TQ.CHANGES names that key when a
// client sends it back: one of the connection's partition that starts
// with "{x}" (put through the Go API, or as "{default}{x}k") is listed
// with its partition in front. Listed as itself, it read back as key k of
// partition x: GET answered another key's value, and the usual "delete
// everything SCAN lists" loop deleted keys of another partition.
func TestListedKeysNameThemselves(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	val := func(s string) *engine.Batch {
		return engine.MustBatch(engine.Field{Name: "value", Col: engine.BytesOf([][]byte{[]byte(s)})})
	}
	_, err := e.kv.Put(ctx, "scratch", "{results}best", val("in scratch"), engine.Tags{"s": "x"})
	require.NoError(t, err)
	_, err = e.kv.Put(ctx, "scratch", "plain", val("plain"), engine.Tags{"s": "x"})
	require.NoError(t, err)
	_, err = e.kv.Put(ctx, "results", "best", val("in results"), nil)
	require.NoError(t, err)
	require.NoError(t, rc.Do(ctx, "SELECT", "scratch").Err())

	want := []string{"{scratch}{results}best", "plain"}
	keys, err := rc.Keys(ctx, "*").Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, want, keys)
	assert.Equal(t, "in scratch", rc.Get(ctx, "{scratch}{results}best").Val())
	list, err := rc.Do(ctx, "TQ.LIST", "EQ", "s", "x").Slice()
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.ElementsMatch(t, want, []any{list[0].([]any)[0], list[1].([]any)[0]})
	ch, err := rc.Do(ctx, "TQ.CHANGES", "").Slice()
	require.NoError(t, err)
	changed := ch[3].([]any)
	require.Len(t, changed, 2)
	assert.ElementsMatch(t, want, []any{changed[0].([]any)[0], changed[1].([]any)[0]})

	iter := rc.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		require.NoError(t, rc.Del(ctx, iter.Val()).Err())
	}
	require.NoError(t, iter.Err())
	assert.Equal(t, []bool{false, false}, e.e.Controller.HasKeys("scratch", []string{"{results}best", "plain"}))
	assert.Equal(t, []bool{true}, e.e.Controller.HasKeys("results", []string{"best"}), "another partition's key survives the sweep")
}

// Tags are JSON text the controller keeps and logs, so a tag name that is
// empty or not UTF-8, or a value that is not UTF-8 (JSON would change its
// bytes, and they read back otherwise after a restart), is refused, by
// TQ.TAG and TQ.TAGCAS as by the commands that name a tag to read.
func TestTagNamesAndValuesTQCannotHold(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, cmd := range [][]any{
		{"TQ.TAG", "k", "", "v"}, {"TQ.TAG", "k", "\xff", "v"}, {"TQ.TAG", "k", "t", "a\xffb"},
		{"TQ.TAGCAS", "k", "t", "ABSENT", "NEW", "a\xffb"}, {"TQ.TAGCAS", "k", "\xff", "ABSENT", "NEW", "v"},
		{"TQ.TAGDEL", "k", ""}, {"TQ.TAGDEL", "k", "\xff"},
	} {
		err := rc.Do(ctx, cmd...).Err()
		require.Error(t, err, "%q", cmd)
		assert.Regexp(t, `^ERR .*(empty tag name|not valid UTF-8)`, err.Error(), "%q", cmd)
	}
	assert.Equal(t, []bool{false}, e.e.Controller.HasKeys("default", []string{"k"}), "nothing was written")
}

// A partition a connection moves to may not hold a '}': a key's
// {partition} form could not name it, so its keys that start with '{'
// were listed under names (`{a}b}{x}k`) that reach another partition's
// keys (key `b}{x}k` of partition `a`). SELECT and TQ.PARTITION refuse
// it, naming the brace, and the connection stays where it was; so does
// a server whose starting partition holds one.
func TestPartitionWithABraceIsRefused(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	for _, cmd := range [][]any{{"SELECT", "a}b"}, {"TQ.PARTITION", "a}b"}} {
		err := rc.Do(ctx, cmd...).Err()
		require.Error(t, err, "%q", cmd)
		assert.Contains(t, err.Error(), `partition id "a}b" holds a '}'`, "%q", cmd)
	}
	p, err := rc.Do(ctx, "TQ.PARTITION").Text()
	require.NoError(t, err)
	assert.Equal(t, "default", p, "the connection's partition after the refusals")
	_, err = NewServer(e.e.Controller, e.e.Units, Config{Partition: "x}y"})
	require.ErrorIs(t, err, engine.ErrInvalid)
}

// TQ.FIELDS [partition] refuses a partition TQ cannot name, and more than
// one argument, as every other command does: before, it answered an
// empty list for both, so a typo'd or mangled partition name read as a
// partition with no fields.
func TestFieldsRefusesBadPartitionAndArity(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	require.NoError(t, rc.Set(ctx, "k", "v", 0).Err())
	for _, p := range []string{"", "\xff"} {
		err := rc.Do(ctx, "TQ.FIELDS", p).Err()
		require.Error(t, err, "%q", p)
		assert.Regexp(t, `^ERR (empty partition id|partition id .* is not valid UTF-8)`, err.Error(), "%q", p)
	}
	err := rc.Do(ctx, "TQ.FIELDS", "default", "extra").Err()
	require.Error(t, err)
	assert.Equal(t, "ERR wrong number of arguments for 'tq.fields' command", err.Error())
	// The connection goes on.
	fs, err := rc.Do(ctx, "TQ.FIELDS", "default").Slice()
	require.NoError(t, err)
	assert.Len(t, fs, 1)
}

// CLIENT SETINFO takes LIB-NAME or LIB-VER, in any case, with a value
// of printable ASCII and no space, and refuses anything else with Redis
// 7.2's errors; before, it answered OK to any attribute and value.
func TestClientSetinfoChecksAsRedis(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	require.NoError(t, rc.Do(ctx, "CLIENT", "SETINFO", "lib-name", "redis-py").Err())
	require.NoError(t, rc.Do(ctx, "CLIENT", "SETINFO", "LIB-VER", "4.3.4").Err())
	for _, c := range []struct{ attr, val, want string }{
		{"BOGUS", "x", "ERR Unrecognized option 'BOGUS'"},
		{"lib-name", "a b", "ERR lib-name cannot contain spaces, newlines or special characters."},
		{"LIB-VER", "1\n", "ERR LIB-VER cannot contain spaces, newlines or special characters."},
	} {
		err := rc.Do(ctx, "CLIENT", "SETINFO", c.attr, c.val).Err()
		require.Error(t, err, "%q", c)
		assert.Equal(t, c.want, err.Error())
	}
	require.NoError(t, rc.Ping(ctx).Err())
}

// A key, field or partition longer than engine.MaxNameBytes is refused
// as one TQ cannot name is: an error reply that says which, its length
// and the limit, quoting only its first bytes; the connection goes on.
// Before, SET took a key of any length up to the frame limit, which every
// KEYS and SCAN then sent back whole.
func TestNamesOverTheBound(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	long := strings.Repeat("n", engine.MaxNameBytes+1)
	want := fmt.Sprintf(`is %d bytes long; TQ's keys, fields and partitions are at most %d bytes`, len(long), engine.MaxNameBytes)
	for _, tc := range []struct {
		what string
		cmd  []any
	}{
		{"key", []any{"SET", long, "v"}},
		{"key", []any{"MSET", "ok", "v", long, "v"}},
		{"key", []any{"HSET", long, "f", "v"}},
		{"key", []any{"GET", long}},
		{"key", []any{"TQ.TAG", long, "t", "v"}},
		{"field", []any{"HSET", "h", long, "v"}},
		{"field", []any{"HMSET", "h", "f", "v", long, "v"}},
		{"partition id", []any{"SET", "{" + long + "}k", "v"}},
		{"partition id", []any{"SELECT", long}},
		{"partition id", []any{"TQ.PARTITION", long}},
	} {
		err := rc.Do(ctx, tc.cmd...).Err()
		require.Error(t, err, "%s of %d bytes", tc.cmd[0], len(long))
		msg := err.Error()
		assert.True(t, strings.HasPrefix(msg, "ERR "), msg)
		assert.Contains(t, msg, tc.what+` "nnnn`, "%s", tc.cmd[0])
		assert.Contains(t, msg, want, "%s", tc.cmd[0])
		assert.Less(t, len(msg), 512, "%s: the reply quotes only the name's first bytes", tc.cmd[0])
	}
	keys, err := rc.Keys(ctx, "*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "nothing was stored")
	// The longest name is a name like any other, and the connection
	// goes on in the partition it had.
	most := strings.Repeat("m", engine.MaxNameBytes)
	require.NoError(t, rc.Set(ctx, most, "v", 0).Err())
	require.NoError(t, rc.HSet(ctx, "h", most, "w").Err())
	assert.Equal(t, "v", rc.Get(ctx, most).Val())
	assert.Equal(t, "w", rc.HGet(ctx, "h", most).Val())
	keys, err = rc.Keys(ctx, "*").Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{most, "h"}, keys)
}

// TestTQCommandsArity checks each TQ.* command given too few or too many
// arguments: it answers an error naming the command (Redis's arity error,
// or one naming what is missing) and the connection goes on, changing
// nothing.
func TestTQCommandsArity(t *testing.T) {
	e := newEndpoint(t, Config{})
	c, err := dialRaw(e.addr)
	require.NoError(t, err)
	defer c.Close()
	arity := func(name string) string {
		return "-ERR wrong number of arguments for '" + strings.ToLower(name) + "' command\r\n"
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"TQ.PARTITION", "a", "b"}, arity("TQ.PARTITION")},
		{[]string{"TQ.PARTITIONS", "x"}, arity("TQ.PARTITIONS")},
		{[]string{"TQ.TAG", "k"}, arity("TQ.TAG")},
		{[]string{"TQ.TAG", "k", "a"}, arity("TQ.TAG")},
		{[]string{"TQ.TAG", "k", "a", "b", "c"}, arity("TQ.TAG")},
		{[]string{"TQ.TAGS"}, arity("TQ.TAGS")},
		{[]string{"TQ.TAGS", "k", "x"}, arity("TQ.TAGS")},
		{[]string{"TQ.TAGDEL", "k"}, arity("TQ.TAGDEL")},
		{[]string{"TQ.TAGCAS", "k"}, arity("TQ.TAGCAS")},
		{[]string{"TQ.TAGCAS", "k", "n", "OLD", "a"}, "-ERR TQ.TAGCAS needs the old value (OLD, OLDJSON or ABSENT) and the new one (NEW, NEWJSON or DELETE)\r\n"},
		{[]string{"TQ.TAGCAS", "k", "n", "ABSENT", "NEW"}, "-ERR TQ.TAGCAS NEW needs a value\r\n"},
		{[]string{"TQ.LIST", "EQ", "a"}, "-ERR TQ.LIST EQ needs a tag name and a value\r\n"},
		{[]string{"TQ.CHANGES"}, arity("TQ.CHANGES")},
		{[]string{"TQ.CHANGES", "0", "TIMEOUT"}, "-ERR TQ.CHANGES cursor [TIMEOUT ms]\r\n"},
		{[]string{"TQ.CHANGES", "0", "TIMEOUT", "1", "x"}, "-ERR TQ.CHANGES cursor [TIMEOUT ms]\r\n"},
		{[]string{"TQ.FIELDS", "a", "b"}, arity("TQ.FIELDS")},
	} {
		got, err := c.do(tc.args...)
		require.NoError(t, err, "%q", tc.args)
		assert.Equal(t, tc.want, got, "%q", tc.args)
	}
	got, err := c.do("PING")
	require.NoError(t, err)
	assert.Equal(t, "+PONG\r\n", got, "the connection goes on")
	got, err = c.do("TQ.PARTITIONS")
	require.NoError(t, err)
	assert.Equal(t, "*0\r\n", got, "nothing was made")
}
