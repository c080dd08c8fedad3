package controller

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A get that names keys and fields the partition lacks is told of both
// in one error, not of the keys first and the fields on the next try.
func TestResolveKeysNamesMissingKeysAndFields(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.CommitKeys(keysCommit("p", []string{"a"}, 1, "x"))
	require.NoError(t, err)

	_, err = c.ResolveKeys("p", []string{"a", "nope"}, []string{"x", "y"}, false)
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), `keys ["nope"] and fields ["y"] not in partition "p"`)

	_, err = c.ResolveKeys("p", []string{"nope"}, []string{"x"}, false)
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), `keys ["nope"] not in partition "p"`)

	_, err = c.ResolveKeys("p", []string{"a"}, []string{"y"}, false)
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), `fields ["y"] not in partition "p"`)
}

// The unknown keys of a lookup are named as data, not only in the
// message: an engine.KeysError lists them, in process and over the wire
// (Error.keys, the first 1024), where the message names the first 16 and
// how many more (2000 keys of 1 KiB would make a message of 2 MiB).
func TestResolveKeysListsTheUnknownKeys(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, err := c.CommitKeys(keysCommit("p", []string{"a"}, 1, "x"))
	require.NoError(t, err)
	unknown := make([]string, 2000)
	for i := range unknown {
		unknown[i] = fmt.Sprintf("%04d%s", i, strings.Repeat("k", 1020))
	}
	asked := append([]string{"a"}, unknown...)

	_, err = c.ResolveKeys("p", asked, nil, false)
	ke, ok := errors.AsType[*engine.KeysError](err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, unknown, ke.Keys)
	assert.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), " and 1984 more not in partition")
	assert.Less(t, len(err.Error()), 32<<10, "the message spells out 16 keys")

	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	err = do(conn, wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: "p", Keys: asked}, &wirepb.ResolveKeysReply{})
	ke, ok = errors.AsType[*engine.KeysError](err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, unknown[:engine.MaxErrorKeys], ke.Keys)
	assert.ErrorIs(t, err, engine.ErrNotFound)
	var re *wire.RemoteError
	assert.ErrorAs(t, err, &re, "a remote error inside")

	// One unknown key: named alone.
	err = do(conn, wire.OpResolveKeys, &wirepb.ResolveKeysRequest{Partition: "p", Keys: []string{"a", "b"}}, &wirepb.ResolveKeysReply{})
	ke, ok = errors.AsType[*engine.KeysError](err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, []string{"b"}, ke.Keys)
	assert.Contains(t, err.Error(), `keys ["b"] not in partition "p"`)
}
