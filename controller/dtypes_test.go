package controller

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// commitEveryDType commits, on two fresh rows of partition, one dense
// field per dtype, named after it, and returns the dtypes by field.
func commitEveryDType(t *testing.T, c *Controller, partition string) map[string]engine.DType {
	t.Helper()
	m := insert(t, c, partition, 2)
	want := map[string]engine.DType{}
	req := engine.CommitRequest{Partition: partition, Indexes: m.Indexes}
	for d := engine.InvalidDType + 1; d.Valid(); d++ {
		f := engine.CommitField{Name: d.String(), DType: d, Kind: engine.Dense, Shape: engine.Shape{3}}
		if d == engine.Bytes {
			f.Kind, f.Shape = engine.Opaque, nil
		}
		req.Fields = append(req.Fields, f)
		want[d.String()] = d
	}
	_, err := c.Commit(req)
	require.NoError(t, err)
	return want
}

func fieldDTypes(t *testing.T, c *Controller, partition string) map[string]engine.DType {
	t.Helper()
	fs, err := c.Fields(partition)
	require.NoError(t, err)
	out := map[string]engine.DType{}
	for _, f := range fs {
		out[f.Name] = f.DType
	}
	return out
}

// Every dtype survives a checkpoint and a crash (the journal replayed),
// and a field keeps refusing a dtype of the same size after either.
func TestEveryDTypeSurvivesRestart(t *testing.T) {
	refused := func(t *testing.T, c *Controller) {
		t.Helper()
		m := insert(t, c, "p", 1)
		for _, tc := range []struct {
			field string
			dt    engine.DType
		}{
			{"uint32", engine.Int32},
			{"int32", engine.Uint32},
			{"float8_e4m3fn", engine.Float8E5M2},
			{"uint64", engine.Complex64},
			{"complex128", engine.Uint64},
		} {
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
				{Name: tc.field, DType: tc.dt, Kind: engine.Dense, Shape: engine.Shape{3}},
			}})
			assert.ErrorIs(t, err, engine.ErrDTypeMismatch, "%v onto %s", tc.dt, tc.field)
		}
	}

	t.Run("checkpoint", func(t *testing.T) {
		c := newController(t, Config{})
		want := commitEveryDType(t, c, "p")
		require.Equal(t, want, fieldDTypes(t, c, "p"))
		dir := filepath.Join(t.TempDir(), "ck")
		require.NoError(t, c.Save(dir))
		d := newController(t, Config{})
		_, err := d.Load(dir)
		require.NoError(t, err)
		assert.Equal(t, want, fieldDTypes(t, d, "p"))
		refused(t, d)
	})
	t.Run("journal", func(t *testing.T) {
		dir := t.TempDir()
		c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
		want := commitEveryDType(t, c, "p")
		require.NoError(t, c.WaitDurable(t.Context()))
		crash(t, c)
		d := openDurable(t, dir, Config{})
		defer d.Close()
		assert.Equal(t, want, fieldDTypes(t, d, "p"))
		refused(t, d)
	})
}
