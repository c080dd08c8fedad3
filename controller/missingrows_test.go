package controller

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// An operation naming many rows the partition lacks is refused naming
// the first 16 and how many more, not every one: a million missing rows
// made an error (and a wire reply) of megabytes.
func TestManyMissingRowsErrorIsShort(t *testing.T) {
	c := newController(t, DefaultConfig())
	m := insert(t, c, "p", 2, "x")
	missing := make([]uint64, 100_000)
	for i := range missing {
		missing[i] = 1_000_000 + uint64(i)
	}
	asked := append(slices.Clone(m.Indexes), missing...)
	tags := make([]engine.Tags, len(asked))
	for i := range tags {
		tags[i] = engine.Tags{"a": int64(i)}
	}
	for name, call := range map[string]func() error{
		"commit": func() error {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: asked})
			return err
		},
		"rows meta": func() error {
			_, err := c.RowsMeta("p", asked, nil)
			return err
		},
		"set tags": func() error { return c.SetTags("p", asked, tags) },
	} {
		err := call()
		require.ErrorIs(t, err, engine.ErrNotFound, name)
		msg := err.Error()
		assert.Contains(t, msg, "rows [1000000 1000001 1000002 ", name)
		assert.Contains(t, msg, " 1000015] and 99984 more are not in partition \"p\"", name)
		assert.Less(t, len(msg), 1024, "%s: %.200s…", name, msg)
	}
}

// So are many keys: repeated ones, or keys of a partition there is not.
func TestManyKeysErrorIsShort(t *testing.T) {
	c := newController(t, DefaultConfig())
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%06d", i)
	}
	_, err := c.ResolveKeys("none", keys, nil, false)
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), `keys ["k000000" "k000001" `)
	assert.Contains(t, err.Error(), `"k000015"] and 99984 more`)
	assert.Less(t, len(err.Error()), 1024, "%.200s…", err)

	_, err = c.ResolveKeys("p", slices.Concat(keys, keys), nil, true)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), `duplicate keys ["k000000" "k000001" `)
	assert.Contains(t, err.Error(), `"k000015"] and 99984 more`)
	assert.Less(t, len(err.Error()), 1024, "%.200s…", err)
}
