package embedded

import (
	"context"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// Meta adapts an in-process controller to [client.MetaService]. The cells
// a commit or a clear drops are freed at once on the units among units
// that hold them (as a controller server frees them on its units).
func Meta(c *controller.Controller, units ...*storage.Unit) client.MetaService {
	l := localMeta{c: c, units: map[engine.UnitID]*storage.Unit{}}
	for _, u := range units {
		l.units[u.ID()] = u
	}
	return l
}

type localMeta struct {
	c     *controller.Controller
	units map[engine.UnitID]*storage.Unit
}

// free frees cells the controller no longer references on their units.
// A unit that refuses (the cells are gone already) loses nothing.
func (l localMeta) free(locs []engine.CellLoc, err error) error {
	if err != nil {
		return err
	}
	by := map[engine.UnitID][]engine.RemoteAddr{}
	for _, loc := range locs {
		if loc.Stored() && !loc.Lost() && loc.Addr.Len > 0 {
			by[loc.Unit] = append(by[loc.Unit], loc.Addr)
		}
	}
	for id, addrs := range by {
		if u := l.units[id]; u != nil {
			u.FreeRanges(engine.CoalesceRanges(addrs))
		}
	}
	return nil
}

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

func (l localMeta) Commit(_ context.Context, req engine.CommitRequest) error {
	return l.free(l.c.Commit(req))
}

func (l localMeta) ResolveKeys(_ context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	return l.c.ResolveKeysCreated(partition, keys, fields, create)
}

func (l localMeta) CommitKeys(_ context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	out, err := l.c.CommitKeys(req)
	if err == nil {
		l.free(out.Replaced, nil)
		out.Replaced = nil
	}
	return out, err
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

func (l localMeta) ClearRows(_ context.Context, partition string, indexes []uint64) error {
	return l.free(l.c.ClearRows(partition, indexes))
}

func (l localMeta) ClearKeys(_ context.Context, partition string, keys []string) error {
	return l.free(l.c.ClearKeys(partition, keys))
}

func (l localMeta) ClearPartition(_ context.Context, partition string) error {
	return l.free(l.c.ClearPartition(partition))
}

func (l localMeta) Partitions(context.Context) ([]string, error) { return l.c.Partitions(), nil }

func (l localMeta) Stats(_ context.Context, partition string) (engine.PartitionStats, error) {
	return l.c.Stats(partition)
}

func (l localMeta) Fields(_ context.Context, partition string) ([]engine.FieldStats, error) {
	return l.c.Fields(partition)
}
