package metrics_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/metrics"
)

// taskSeries returns the tq_task_consumed_rows and tq_task_held_rows
// series of one partition, by task.
func taskSeries(t *testing.T, reg *metrics.Registry, partition string) (consumed, held map[string]float64) {
	t.Helper()
	mfs, err := reg.Gatherer().Gather()
	require.NoError(t, err)
	consumed, held = map[string]float64{}, map[string]float64{}
	for _, mf := range mfs {
		var into map[string]float64
		switch mf.GetName() {
		case "tq_task_consumed_rows":
			into = consumed
		case "tq_task_held_rows":
			into = held
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["partition"] == partition {
				into[l["task"]] = m.GetGauge().GetValue()
			}
		}
	}
	return consumed, held
}

// commitRows makes n rows of partition p with field x produced.
func commitRows(t *testing.T, c *controller.Controller, p string, n int) {
	t.Helper()
	m, err := c.Insert(p, n, []string{"x"})
	require.NoError(t, err)
	_, err = c.Commit(engine.CommitRequest{Partition: p, Indexes: m.Indexes,
		Fields: []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}})
	require.NoError(t, err)
}

// A task's series stay, at 0, while its partition knows it: a task whose
// consumption was reset, or whose fetch took nothing yet. Stats lists
// only the tasks with rows consumed, and the series used to vanish with
// the count: a panel dropped the task, an alert on it saw no series.
func TestTaskSeriesStayAtZero(t *testing.T) {
	c, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	commitRows(t, c, "p", 2)
	got, err := c.Fetch(t.Context(), engine.FetchRequest{Partition: "p", Task: "reset", Fields: []string{"x"}, BatchSize: 2})
	require.NoError(t, err)
	require.Equal(t, 2, got.Len())
	got, err = c.Fetch(t.Context(), engine.FetchRequest{Partition: "p", Task: "idle", Fields: []string{"x"}, BatchSize: 3})
	require.NoError(t, err)
	require.Zero(t, got.Len(), "three rows asked of two: none taken")

	reg := metrics.New()
	reg.AddController(c, nil)
	consumed, held := taskSeries(t, reg, "p")
	assert.Equal(t, map[string]float64{"reset": 2, "idle": 0}, consumed, "tq_task_consumed_rows before the reset")
	assert.Equal(t, map[string]float64{"reset": 0, "idle": 0}, held, "tq_task_held_rows before the reset")

	require.NoError(t, c.ResetConsumption("p", "reset"))
	consumed, held = taskSeries(t, reg, "p")
	assert.Equal(t, map[string]float64{"reset": 0, "idle": 0}, consumed, "tq_task_consumed_rows after the reset")
	assert.Equal(t, map[string]float64{"reset": 0, "idle": 0}, held, "tq_task_held_rows after the reset")
}

// TestTaskSeriesAreBounded: tasks are named by the workload, up to 1024
// per partition, and each had two series (consumed, held) of its own,
// unbounded where fields were bounded: at most MaxTaskSeries tasks of a
// partition (the first by name) get them; tq_partition_tasks counts them
// all.
func TestTaskSeriesAreBounded(t *testing.T) {
	c, err := controller.New(controller.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	commitRows(t, c, "p", 1)
	const n = 3 * metrics.MaxTaskSeries
	for i := range n {
		// Each fetch asks for two rows of one: it takes nothing, and
		// makes its task known.
		_, err := c.Fetch(t.Context(), engine.FetchRequest{Partition: "p", Task: fmt.Sprintf("task%04d", n-1-i), Fields: []string{"x"}, BatchSize: 2})
		require.NoError(t, err)
	}

	reg := metrics.New()
	reg.AddController(c, nil)
	consumed, held := taskSeries(t, reg, "p")
	assert.Equal(t, metrics.MaxTaskSeries, len(consumed), "tq_task_consumed_rows series of one partition")
	assert.Equal(t, metrics.MaxTaskSeries, len(held), "tq_task_held_rows series of one partition")
	assert.Contains(t, consumed, "task0000", "the first task by name")
	assert.Contains(t, consumed, fmt.Sprintf("task%04d", metrics.MaxTaskSeries-1), "the last task with a series")
	cl := &cluster{reg: reg}
	assert.Equal(t, float64(n), cl.value(t, "tq_partition_tasks", "partition", "p"), "tq_partition_tasks")
}
