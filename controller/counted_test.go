package controller

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestDeleteTagsCounted checks the counts DeleteTagsCounted answers: the
// names each key had, a name given twice once, and of callers removing
// one tag at once exactly one hears that the key had it.
func TestDeleteTagsCounted(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b"}, engine.Tags{"x": 1, "y": 2, "z": 3}, engine.Tags{"y": 1})
	_, had, err := c.DeleteTagsCounted("p", []string{"a", "b"}, []string{"x", "y", "x", "never"})
	require.NoError(t, err)
	assert.Equal(t, []int{2, 1}, had)

	for trial := range 50 {
		k := fmt.Sprint("k", trial)
		putTags(t, c, "p", []string{k}, engine.Tags{"worker": "w1"})
		var total atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				_, had, err := c.DeleteTagsCounted("p", []string{k}, []string{"worker"})
				assert.NoError(t, err)
				total.Add(int64(had[0]))
			})
		}
		wg.Wait()
		require.Equal(t, int64(1), total.Load(), "trial %d: callers that heard the tag was there", trial)
	}
}

// TestClearKeysCounted checks that ClearKeysCounted answers how many of
// the keys were there, and that of callers clearing one key at once
// exactly one hears it was.
func TestClearKeysCounted(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b"}, engine.Tags{"t": 1}, engine.Tags{"t": 1})
	n, _, err := c.ClearKeysCounted("p", []string{"a", "b", "a", "never"})
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	n, _, err = c.ClearKeysCounted("nowhere", []string{"a"})
	require.NoError(t, err)
	assert.Zero(t, n)

	for trial := range 50 {
		k := fmt.Sprint("k", trial)
		putTags(t, c, "p", []string{k}, engine.Tags{"t": 1})
		var total atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				n, _, err := c.ClearKeysCounted("p", []string{k})
				assert.NoError(t, err)
				total.Add(int64(n))
			})
		}
		wg.Wait()
		require.Equal(t, int64(1), total.Load(), "trial %d: callers that heard the key was there", trial)
	}
}
