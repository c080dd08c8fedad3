package controller

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

func TestClearFields(t *testing.T) {
	c := newController(t, DefaultConfig())
	loc := func(i int) engine.CellLoc {
		return engine.CellLoc{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: uint64(i) * 8, Len: 8}}
	}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: []string{"c", "b", "a"},
		Fields: []engine.CommitField{
			{Name: "prompt", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{loc(0), loc(1), loc(4)}},
			{Name: "reward", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{loc(2), loc(3), loc(5)}},
		},
		Tags: []engine.Tags{nil, nil, {"status": "done"}}})
	require.NoError(t, err)
	// A consumer of reward takes c first: its view of ready rows exists
	// before the clear.
	fetch := func() *engine.BatchMeta {
		fm, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"prompt", "reward"}, BatchSize: 1})
		require.NoError(t, err)
		return fm
	}
	first := fetch()
	require.Equal(t, 1, first.Len())

	if first.Keys[0] == "a" {
		t.Fatal("the sequential sampler took a first; the test needs a left for after the clear")
	}
	n, freed, err := c.ClearFields("p", []string{"a", "zz"}, []string{"reward", "never"})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, []engine.CellLoc{loc(5)}, freed, "the dropped cell, to be freed")
	_, ok := c.KeyCell("p", "a", "reward")
	assert.False(t, ok)
	got, ok := c.KeyCell("p", "a", "prompt")
	assert.True(t, ok, "the key keeps its other fields")
	assert.Equal(t, loc(4), got)
	m, err := c.ResolveKeys("p", []string{"a"}, []string{}, false)
	require.NoError(t, err)
	assert.Equal(t, engine.Tags{"status": "done"}, m.Tags[0], "and its tags")

	// The consumer no longer sees key a: it takes the one other key left.
	rest := fetch()
	require.Equal(t, 1, rest.Len())
	assert.NotEqual(t, "a", rest.Keys[0])
	assert.NotEqual(t, first.Keys[0], rest.Keys[0])
	assert.Zero(t, fetch().Len(), "a is not ready for reward any more")

	// Nothing to drop: no change; bad input says what was wrong.
	n, freed, err = c.ClearFields("p", []string{"a"}, []string{"reward"})
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Empty(t, freed)
	n, _, err = c.ClearFields("nope", []string{"a"}, []string{"x"})
	require.NoError(t, err)
	assert.Zero(t, n)
	_, _, err = c.ClearFields("p", []string{"a"}, nil)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "no fields")
	_, _, err = c.ClearFields("p", []string{"a", "a"}, []string{"prompt"})
	require.ErrorIs(t, err, engine.ErrInvalid)

	// The last cell of a field gone: the field forgets its dtype, so a
	// later put may give it another.
	_, _, err = c.ClearFields("p", []string{"b", "c"}, []string{"reward"})
	require.NoError(t, err)
	fs, err := c.Fields("p")
	require.NoError(t, err)
	for _, f := range fs {
		if f.Name == "reward" {
			assert.Zero(t, f.Produced)
		}
	}
}

// TestClearFieldsOfARepeatedNameWalksTheKeysOnce: a field named many
// times is cleared from the keys once, so clearing it named 4× as often
// from 4× the keys walks 4× the rows, not 16× (each name walked every
// key, so repeats cost keys × repeats).
func TestClearFieldsOfARepeatedNameWalksTheKeysOnce(t *testing.T) {
	walked := 0
	testHookClearFieldsWalk = func(rows int) { walked += rows }
	t.Cleanup(func() { testHookClearFieldsWalk = nil })
	clear := func(n int) int {
		c := newController(t, DefaultConfig())
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%d", i)
		}
		_, err := c.CommitKeys(keysCommit("p", keys, 1, "f", "g"))
		require.NoError(t, err)
		fields := make([]string, 0, n+1)
		for range n {
			fields = append(fields, "f")
		}
		fields = append(fields, "g")
		walked = 0
		cleared, freed, err := c.ClearFields("p", keys, fields)
		require.NoError(t, err)
		require.Equal(t, 2*n, cleared, "each key's f and g")
		require.Len(t, freed, 2*n)
		for _, k := range keys[:3] {
			m, err := c.ResolveKeys("p", []string{k}, nil, false)
			require.NoError(t, err)
			require.Empty(t, m.FieldNames(), "key %s after its fields were cleared", k)
		}
		return walked
	}
	small, large := clear(256), clear(1024)
	require.LessOrEqualf(t, large, 5*small, "clearing a name repeated 256 times from 256 keys walked %d rows, 1024 from 1024 walked %d", small, large)
}
