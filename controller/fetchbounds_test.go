package controller

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A partition keeps the consumption of at most maxTasks tasks and at most
// maxViews ready views: a fetch under one more task name, or of one more
// set of fields, is refused naming the bound, and the tasks and views it
// keeps go on. A peer fetching under ever new names used to add a bit to
// every row and a view to every commit's work, without end (and an
// unconsume under a new task name a bit to every row).
func TestFetchesUnderEverNewNamesAreBounded(t *testing.T) {
	ctx := context.Background()
	c := newController(t, DefaultConfig())
	fields := make([]string, 11) // 2^11 field sets
	for i := range fields {
		fields[i] = fmt.Sprint("f", i)
	}
	produce := func() {
		m := insert(t, c, "p", 2, fields...)
		cfs := make([]engine.CommitField, len(fields))
		for i, f := range fields {
			cfs[i] = engine.CommitField{Name: f, DType: engine.Int64, Kind: engine.Dense}
		}
		_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: cfs})
		require.NoError(t, err)
	}
	produce()
	fetch := func(task string, fs []string) error {
		_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: task, Fields: fs, BatchSize: 4})
		return err
	}
	for i := range maxTasks {
		require.NoError(t, fetch(fmt.Sprint("t", i), fields[:1]))
	}
	err := fetch("one-more", fields[:1])
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.ErrorContains(t, err, `keeps the consumption of 1024 tasks, the most it does, and task "one-more" would be one more`)
	require.NoError(t, fetch("t0", fields[:1]), "a task it keeps")
	// A DP group's ask makes its task before any view: bounded too.
	for _, tc := range balancedCases {
		req := tc.fetch(0, 0)
		req.Task, req.Fields = "one-more-rank", fields[:1]
		_, err = c.Fetch(ctx, req)
		require.ErrorIs(t, err, engine.ErrCapacity, tc.spec.Name)
		assert.ErrorContains(t, err, `task "one-more-rank" would be one more`)
		require.Equal(t, maxTasks, len(c.parts["p"].tasks), "no task made past the limit")
	}

	// Giving back under a task name never heard of keeps nothing either.
	c = newController(t, DefaultConfig())
	produce()
	for i := range maxTasks + 1 {
		require.NoError(t, c.Unconsume("p", fmt.Sprint("u", i), fmt.Sprint("k", i)))
	}
	require.NoError(t, fetch("after-unconsumes", fields[:1]), "a fetch after unconsumes of %d unknown tasks", maxTasks+1)

	c = newController(t, DefaultConfig())
	produce()
	for set := 1; set <= maxViews; set++ {
		var fs []string
		for i := range fields {
			if set&(1<<i) != 0 {
				fs = append(fs, fields[i])
			}
		}
		require.NoError(t, fetch("t", fs))
	}
	err = fetch("t", fields)
	require.ErrorIs(t, err, engine.ErrCapacity)
	assert.ErrorContains(t, err, "keeps 1024 ready views (a task and the fields it fetches), the most it does")
	require.NoError(t, fetch("t", fields[:1]), "a view it keeps")
}
