package embedded

import (
	"context"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
)

// Meta adapts an in-process controller to [client.MetaService].
func Meta(c *controller.Controller) client.MetaService { return localMeta{c} }

type localMeta struct{ c *controller.Controller }

var _ client.MetaService = localMeta{}

func (l localMeta) Insert(_ context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error) {
	return l.c.Insert(partition, n, fields)
}

func (l localMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	return l.c.Fetch(ctx, req)
}

func (l localMeta) ForceFetch(_ context.Context, partition string, fields []string) (*engine.BatchMeta, error) {
	return l.c.ForceFetch(partition, fields)
}

func (l localMeta) RowsMeta(_ context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	return l.c.RowsMeta(partition, indexes, fields)
}

func (l localMeta) Commit(_ context.Context, req engine.CommitRequest) ([]engine.CellLoc, error) {
	return l.c.Commit(req)
}

func (l localMeta) ResolveKeys(_ context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	return l.c.ResolveKeysCreated(partition, keys, fields, create)
}

func (l localMeta) CommitKeys(_ context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	return l.c.CommitKeys(req)
}

func (l localMeta) KeysOf(_ context.Context, partition string, indexes []uint64) ([]string, error) {
	return l.c.KeysOf(partition, indexes)
}

func (l localMeta) SetTags(_ context.Context, partition string, indexes []uint64, tags []engine.Tags) error {
	return l.c.SetTags(partition, indexes, tags)
}

func (l localMeta) ListKeys(_ context.Context, partition string) (map[string][]engine.KeyInfo, error) {
	return l.c.ListKeys(partition), nil
}

func (l localMeta) ProductionStatus(_ context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	return l.c.ProductionStatus(partition, fields)
}

func (l localMeta) ConsumptionStatus(_ context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	return l.c.ConsumptionStatus(partition, task)
}

func (l localMeta) ResetConsumption(_ context.Context, partition, task string) error {
	return l.c.ResetConsumption(partition, task)
}

func (l localMeta) ClearRows(_ context.Context, partition string, indexes []uint64) ([]engine.CellLoc, error) {
	return l.c.ClearRows(partition, indexes)
}

func (l localMeta) ClearKeys(_ context.Context, partition string, keys []string) ([]engine.CellLoc, error) {
	return l.c.ClearKeys(partition, keys)
}

func (l localMeta) ClearPartition(_ context.Context, partition string) ([]engine.CellLoc, error) {
	return l.c.ClearPartition(partition)
}

func (l localMeta) Partitions(context.Context) ([]string, error) { return l.c.Partitions(), nil }

func (l localMeta) Stats(_ context.Context, partition string) (engine.PartitionStats, error) {
	return l.c.Stats(partition)
}

func (l localMeta) Fields(_ context.Context, partition string) ([]engine.FieldStats, error) {
	return l.c.Fields(partition)
}
