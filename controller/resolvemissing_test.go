package controller

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
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
