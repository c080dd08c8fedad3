package resp

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"os/exec"
	"slices"
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

// INFO keyspace names each partition so that the clients' parsers read
// it back: redis-py's parse_info splits a line at its first ':' and the
// value at ',' and '=' (go-redis leaves the text to the caller). A
// partition named with ':', ',', '=', a space or a line break broke the
// line apart or added lines of its own (a name "x\r\nrole:master" made a
// field of its own), and one that starts with '#' was read as a section
// header and dropped by both parsers (redis-py's parse_info skips such
// lines, go-redis's InfoMap starts a section). Such a name is written
// percent-encoded.
func TestInfoKeyspaceNamesParse(t *testing.T) {
	e := newEndpoint(t, Config{})
	names := []string{"plain", "a:b", "c,d=e", "sp ace", "x\r\nrole:master", "pct%41", "ü", "#x"}
	for _, p := range names {
		_, err := e.e.Controller.CreatePartition(p)
		require.NoError(t, err)
	}
	got, err := e.client(t, nil).Info(context.Background(), "keyspace").Result()
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n") {
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		require.True(t, ok, "line %q", line)
		for _, kv := range strings.Split(value, ",") {
			k, v, ok := strings.Cut(kv, "=")
			require.True(t, ok, "line %q: %q has no '='", line, kv)
			_, err := strconv.Atoi(v)
			require.NoError(t, err, "line %q: %s", line, k)
		}
		p, err := url.PathUnescape(name)
		require.NoError(t, err, "line %q", line)
		seen[p] = true
	}
	for _, p := range names {
		assert.True(t, seen[p], "partition %q not listed as itself: %q", p, got)
	}
	assert.Contains(t, got, "\r\nplain:keys=0,rows=0\r\n", "a plain name stays as it is")
	// go-redis's InfoMap files each line under the section above it.
	sections, err := e.client(t, nil).InfoMap(context.Background(), "keyspace").Result()
	require.NoError(t, err)
	assert.Len(t, sections, 1, "sections: %v", sections)
	assert.Len(t, sections["Keyspace"], len(names), "Keyspace: %v", sections["Keyspace"])
}

// INFO keyspace lists the first maxInfoPartitions partitions and counts
// the rest, rather than looking at every one of a large controller's.
func TestInfoKeyspaceBounded(t *testing.T) {
	e := newEndpoint(t, Config{})
	for i := range maxInfoPartitions + 3 {
		_, err := e.e.Controller.CreatePartition(fmt.Sprintf("p%05d", i))
		require.NoError(t, err)
	}
	got, err := e.client(t, nil).Info(context.Background(), "keyspace").Result()
	require.NoError(t, err)
	assert.Equal(t, maxInfoPartitions, strings.Count(got, ":keys="))
	assert.Contains(t, got, "\r\ntq_partitions_not_listed:3\r\n")
	assert.Contains(t, got, fmt.Sprintf("p%05d:keys=0", maxInfoPartitions-1))
}

// TestClientInfoFieldsAndPartition checks CLIENT INFO as wire/resp.md
// gives it: every field redis-server 7.0 gives, in its order (compared
// with a real one where it is installed); db the partition's number
// where its name is one, else 0; tq-partition the partition where its
// name is printable with no space or '='.
func TestClientInfoFieldsAndPartition(t *testing.T) {
	e := newEndpoint(t, Config{})
	tq, err := dialRaw(e.addr)
	require.NoError(t, err)
	defer tq.Close()
	// info is CLIENT INFO's fields, key=value each, in order.
	info := func(t *testing.T, c *rawConn) []string {
		out, err := c.do("CLIENT", "INFO")
		require.NoError(t, err)
		_, line, ok := strings.Cut(out, "\r\n")
		require.True(t, ok, "%q", out)
		return strings.Fields(line)
	}
	keys := func(fields []string) []string {
		var out []string
		for _, f := range fields {
			k, _, _ := strings.Cut(f, "=")
			out = append(out, k)
		}
		return out
	}
	redis70 := []string{"id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub", "ssub", "multi", "qbuf", "qbuf-free", "argv-mem", "multi-mem", "rbs", "rbp", "obl", "oll", "omem", "tot-mem", "events", "cmd", "user", "redir", "resp"}
	t.Run("fields", func(t *testing.T) {
		assert.Equal(t, append(slices.Clone(redis70), "tq-partition"), keys(info(t, tq)))
		if _, err := exec.LookPath("redis-server"); err != nil {
			t.Skip("redis-server is not installed")
		}
		rd, err := dialRaw(startRedis(t))
		require.NoError(t, err)
		defer rd.Close()
		if v, _ := rd.do("INFO", "server"); !strings.Contains(v, "redis_version:7.0.") {
			t.Skipf("redis-server is not 7.0: %.60q", v)
		}
		assert.Equal(t, redis70, keys(info(t, rd)), "redis-server 7.0's fields")
	})
	for _, tc := range []struct {
		partition string
		db        string
		tq        string // "" for none
	}{
		{"3", "db=3", "tq-partition=3"},
		{"03", "db=0", "tq-partition=03"},
		{"+3", "db=0", "tq-partition=+3"},
		{"trainer-a", "db=0", "tq-partition=trainer-a"},
		{"a b", "db=0", ""},
		{"k=v", "db=0", ""},
		{"é", "db=0", ""},
	} {
		t.Run(tc.partition, func(t *testing.T) {
			r, err := tq.do("SELECT", tc.partition)
			require.NoError(t, err)
			require.Equal(t, "+OK\r\n", r)
			fields := info(t, tq)
			assert.Contains(t, fields, tc.db)
			var got string
			for _, f := range fields {
				if strings.HasPrefix(f, "tq-partition=") {
					got = f
				}
			}
			assert.Equal(t, tc.tq, got)
		})
	}
}

// TestCommandTable checks COMMAND as wire/resp.md gives it: COMMAND and
// COMMAND DOCS an empty array (clients work without a command table),
// other subcommands Redis has an empty array too, and COMMAND COUNT the
// number of commands TQ serves.
func TestCommandTable(t *testing.T) {
	e := newEndpoint(t, Config{})
	c, err := dialRaw(e.addr)
	require.NoError(t, err)
	defer c.Close()
	for _, args := range [][]string{{"COMMAND"}, {"COMMAND", "DOCS"}, {"command", "docs", "get"}, {"COMMAND", "INFO", "GET"}, {"COMMAND", "LIST"}} {
		got, err := c.do(args...)
		require.NoError(t, err)
		assert.Equal(t, "*0\r\n", got, "%q", args)
	}
	got, err := c.do("COMMAND", "COUNT")
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf(":%d\r\n", len(commands)), got)
	// The table of wire/resp.md, "Commands", and no other.
	documented := strings.Fields(`PING ECHO QUIT HELLO AUTH SELECT COMMAND CONFIG INFO CLIENT DBSIZE
		FLUSHDB FLUSHALL SET GET MSET MGET DEL UNLINK EXISTS TYPE KEYS SCAN HSET HMSET HGET HMGET
		HGETALL HKEYS HLEN HEXISTS HDEL MULTI EXEC DISCARD TQ.PARTITION TQ.PARTITIONS TQ.TAG TQ.TAGS
		TQ.TAGDEL TQ.TAGCAS TQ.LIST TQ.CHANGES TQ.FIELDS`)
	assert.ElementsMatch(t, documented, slices.Collect(maps.Keys(commands)))
}
