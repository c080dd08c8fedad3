package client

import (
	"context"

	"github.com/tqgo/tq/engine"
)

// MetaService is what a client needs from the controller. In one process
// it is the controller itself (see [github.com/tqgo/tq/embedded.Meta]);
// across processes it is a network stub speaking the wire protocol. Every
// method takes a context because a remote controller can be slow or gone.
type MetaService interface {
	Insert(ctx context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error)
	Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error)
	ForceFetch(ctx context.Context, partition string, fields []string) (*engine.BatchMeta, error)
	RowsMeta(ctx context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error)
	// Commit, CommitKeys and the clears leave freeing the storage of the
	// cells they drop to the metadata service: the controller frees them
	// once the change is durable.
	Commit(ctx context.Context, req engine.CommitRequest) error
	ResolveKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error)
	CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error)
	KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error)
	SetTags(ctx context.Context, partition string, indexes []uint64, tags []engine.Tags) error
	ListKeys(ctx context.Context, partition string) (map[string][]engine.KeyInfo, error)
	ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error)
	ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error)
	ResetConsumption(ctx context.Context, partition, task string) error
	ClearRows(ctx context.Context, partition string, indexes []uint64) error
	ClearKeys(ctx context.Context, partition string, keys []string) error
	ClearPartition(ctx context.Context, partition string) error
	Partitions(ctx context.Context) ([]string, error)
	Stats(ctx context.Context, partition string) (engine.PartitionStats, error)
	Fields(ctx context.Context, partition string) ([]engine.FieldStats, error)
}

// KeyService is what the KV API's tag calls and change feed need from the
// controller beyond [MetaService] (see the controller's ListKeysWhere,
// DeleteTags, CompareAndSetTag and KeyChanges). [RemoteMeta] and the
// embedded adapter implement it; the KV API finds it by type assertion,
// and a metadata service without it makes those calls fail with
// [engine.ErrNotSupported].
type KeyService interface {
	// ListKeysWhere is ListKeys of the keys whose tags pass where; the
	// controller filters, so only those keys are sent.
	ListKeysWhere(ctx context.Context, partition string, where engine.TagFilter) (map[string][]engine.KeyInfo, error)
	// DeleteTags removes the tags names from every one of keys, atomically,
	// and returns each key's tags after.
	DeleteTags(ctx context.Context, partition string, keys, names []string) ([]engine.Tags, error)
	// CompareAndSetTag is an atomic read-modify-write of one tag.
	CompareAndSetTag(ctx context.Context, req engine.TagSwap) (engine.TagSwapped, error)
	// KeyChanges lists the keys changed after a cursor, waiting for one
	// with req.Wait.
	KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error)
}
