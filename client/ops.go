package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/tqgo/tq/engine"
)

// Clear removes the meta's rows (from every partition they belong to);
// the controller frees their storage. Rows already gone are ignored; an empty meta is a
// no-op. The controller forgets the rows first, so no new reader finds
// them; readers holding views keep their bytes until they release.
func (c *Client) Clear(ctx context.Context, meta *engine.BatchMeta) error {
	var errs []error
	for _, g := range groupByPartition(meta) {
		idx := make([]uint64, len(g.pos))
		for i, p := range g.pos {
			idx[i] = meta.Indexes[p]
		}
		if err := c.meta.ClearRows(ctx, g.part, idx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return &engine.OpError{Op: "clear", Err: err}
	}
	return nil
}

// ClearKeys removes the rows of keys (the controller frees their
// storage); unknown keys and partitions are ignored.
func (c *Client) ClearKeys(ctx context.Context, partition string, keys []string) error {
	return c.meta.ClearKeys(ctx, partition, keys)
}

// ClearPartition drops a partition with all its rows (the controller frees
// their storage). Clearing an unknown partition does nothing.
func (c *Client) ClearPartition(ctx context.Context, partition string) error {
	return c.meta.ClearPartition(ctx, partition)
}

// SetTags merges the meta's per-row tags into the controller's, partition
// by partition in name order (an error names those merged before it).
func (c *Client) SetTags(ctx context.Context, meta *engine.BatchMeta) error {
	if len(meta.Tags) != meta.Len() {
		return &engine.OpError{Op: "set tags", Err: fmt.Errorf("%d tag maps for %d rows: %w", len(meta.Tags), meta.Len(), engine.ErrInvalid)}
	}
	var done []string
	for _, g := range groupByPartition(meta) {
		idx := make([]uint64, len(g.pos))
		tags := make([]engine.Tags, len(g.pos))
		for i, p := range g.pos {
			idx[i], tags[i] = meta.Indexes[p], meta.Tags[p]
		}
		if err := c.meta.SetTags(ctx, g.part, idx, tags); err != nil {
			return committedBefore(err, done)
		}
		done = append(done, g.part)
	}
	return nil
}

// ProductionStatus reports, per row of the partition, which fields are
// produced.
func (c *Client) ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	return c.meta.ProductionStatus(ctx, partition, fields)
}

// ConsumptionStatus reports, per row of the partition, whether the task
// consumed it.
func (c *Client) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	return c.meta.ConsumptionStatus(ctx, partition, task)
}

// CheckProduction reports whether every row of the partition has every
// field produced (false for an unknown partition or field).
func (c *Client) CheckProduction(ctx context.Context, partition string, fields []string) (bool, error) {
	st, err := c.meta.ProductionStatus(ctx, partition, fields)
	if errors.Is(err, engine.ErrNotFound) {
		return false, nil
	}
	if err != nil || len(st.Indexes) == 0 {
		return false, err
	}
	for _, r := range st.Produced {
		for _, ok := range r {
			if !ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// CheckConsumption reports whether the task consumed every row of the
// partition for good (false for an unknown partition, and while held
// fetches hold rows that may still come back: [engine.FetchRequest.Hold]).
func (c *Client) CheckConsumption(ctx context.Context, partition, task string) (bool, error) {
	st, err := c.meta.ConsumptionStatus(ctx, partition, task)
	if errors.Is(err, engine.ErrNotFound) {
		return false, nil
	}
	if err != nil || len(st.Indexes) == 0 || len(st.Held) > 0 {
		return false, err
	}
	for _, ok := range st.Consumed {
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// ResetConsumption makes a task's rows fetchable again ("" resets every
// task).
func (c *Client) ResetConsumption(ctx context.Context, partition, task string) error {
	return c.meta.ResetConsumption(ctx, partition, task)
}

// Partitions lists the partitions.
func (c *Client) Partitions(ctx context.Context) ([]string, error) { return c.meta.Partitions(ctx) }

// MetaByKeys resolves keys to rows (see [github.com/tqgo/tq/controller.Controller.ResolveKeys]).
func (c *Client) MetaByKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, error) {
	m, _, err := c.meta.ResolveKeys(ctx, partition, keys, fields, create)
	return m, err
}

// KeysOf returns the key of each row ("" where a row has none).
func (c *Client) KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error) {
	return c.meta.KeysOf(ctx, partition, indexes)
}

// Fields describes a partition's fields.
func (c *Client) Fields(ctx context.Context, partition string) ([]engine.FieldStats, error) {
	return c.meta.Fields(ctx, partition)
}

// Stats summarizes a partition.
func (c *Client) Stats(ctx context.Context, partition string) (engine.PartitionStats, error) {
	return c.meta.Stats(ctx, partition)
}
