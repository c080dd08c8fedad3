package resp

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// CLIENT INFO answers a line the clients parse: go-redis's ClientInfo
// reads db (and the other counters) as integers, and redis-py 4.3's
// client_info() (parse_client_info) indexes id, age, idle, db, sub, psub,
// multi, qbuf, qbuf-free, obl, argv-mem, oll, omem and tot-mem and reads
// each with int(). TQ answered id, addr, name and db=<partition>, so
// go-redis failed on db=default and redis-py raised KeyError.
func TestClientInfoParsesAsRedis(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, &redis.Options{ClientName: "probe"})
	info, err := rc.ClientInfo(ctx).Result()
	if assert.NoError(t, err, "go-redis ClientInfo") {
		assert.Equal(t, "probe", info.Name)
	}
	// redis-py 4.3.4, redis/client.py parse_client_info, in Go.
	txt, err := rc.Do(ctx, "CLIENT", "INFO").Text()
	require.NoError(t, err)
	fields := map[string]string{}
	for _, kv := range strings.Split(txt, " ") {
		k, v, ok := strings.Cut(kv, "=")
		if assert.True(t, ok, "redis-py: %q has no '='", kv) {
			fields[k] = v
		}
	}
	for _, k := range []string{"id", "age", "idle", "db", "sub", "psub", "multi", "qbuf", "qbuf-free", "obl", "argv-mem", "oll", "omem", "tot-mem"} {
		v, ok := fields[k]
		if !assert.True(t, ok, "redis-py client_info(): KeyError %q in %q", k, txt) {
			continue
		}
		_, err := strconv.Atoi(strings.TrimSpace(v))
		assert.NoError(t, err, "redis-py client_info(): int(%q) of %s", v, k)
	}
}

// INFO answers the sections asked for, as Redis does: redis-py's
// info("keyspace") and go-redis's Info(ctx, "keyspace") are read as the
// keyspace alone, and a section Redis does not have answers the empty
// string. TQ answered every section whatever was asked.
func TestInfoSectionsAsRedis(t *testing.T) {
	rd := startRedis(t)
	e := newEndpoint(t, Config{})
	tq, err := dialRaw(e.addr)
	require.NoError(t, err)
	defer tq.Close()
	r, err := dialRaw(rd)
	require.NoError(t, err)
	defer r.Close()
	for _, c := range [][]string{{"SET", "k", "v"}} {
		_, err := tq.do(c...)
		require.NoError(t, err)
	}
	got, err := tq.do("INFO", "keyspace")
	require.NoError(t, err)
	assert.NotContains(t, got, "# Server", "INFO keyspace answers other sections")
	assert.Contains(t, got, "# Keyspace")
	got, err = tq.do("INFO", "server")
	require.NoError(t, err)
	assert.NotContains(t, got, "# Keyspace", "INFO server answers other sections")
	assert.Contains(t, got, "# Server")
	want, err := r.do("INFO", "nosuchsection")
	require.NoError(t, err)
	got, err = tq.do("INFO", "nosuchsection")
	require.NoError(t, err)
	assert.Equal(t, want, got, "INFO of a section Redis does not have")
}
