package client

// Names — keys, partition ids, field names, task names — are checked
// before a request leaves the client: one that is not valid UTF-8 (which
// the wire's protobuf strings cannot carry), empty where a name is
// required, or longer than [engine.MaxNameBytes] is an error wrapping
// engine.ErrInvalid that quotes it (a long one, its first bytes) and says
// what it is; so is a field named twice in one list (a get's, a fetch's,
// an insert's). RemoteMeta checks its own requests (it is also used alone,
// as by tq stat); [New] wraps any other metadata service, such as the
// embedded controller, in checkedMeta, so both paths refuse the same
// names. Puts check their field names and keys before any byte goes to a
// storage unit.

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/tqgo/tq/engine"
)

// What a name is, as errors say it.
const (
	nameKey       = "key"
	namePartition = "partition"
	nameField     = "field"
	nameTask      = "task"
	nameDir       = "checkpoint name"
	nameTag       = "tag"
)

// checkName refuses an empty name, one that is not valid UTF-8, or one
// longer than engine.MaxNameBytes.
func checkName(kind, s string) error { return checkAt(kind, s, "") }

// checkAt is checkName with where the name is in a list ("" or " (2 of
// 5)") for the message.
func checkAt(kind, s, at string) error {
	if s == "" {
		if kind == nameKey {
			return fmt.Errorf("empty key%s: %w", at, engine.ErrInvalid)
		}
		return fmt.Errorf("empty %s name%s: %w", kind, at, engine.ErrInvalid)
	}
	if err := engine.CheckNameSize(kind, s); err != nil {
		if at != "" {
			return fmt.Errorf("%s%s: %w", kind, at, err)
		}
		return err
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q%s is not valid UTF-8: %w", kind, s, at, engine.ErrInvalid)
	}
	return nil
}

// checkUTF8 refuses a name that is not valid UTF-8; "" passes (for the
// names that may be empty: every partition of a listing, every task of a
// reset).
func checkUTF8(kind, s string) error {
	if s == "" {
		return nil
	}
	return checkName(kind, s)
}

// checkNames runs checkName on each of names.
func checkNames(kind string, names []string) error {
	for i, s := range names {
		if s != "" && len(s) <= engine.MaxNameBytes && utf8.ValidString(s) {
			continue
		}
		at := ""
		if len(names) > 1 {
			at = fmt.Sprintf(" (%d of %d)", i+1, len(names))
		}
		return checkAt(kind, s, at)
	}
	return nil
}

// checkPartFields checks a partition and a list of its fields, which
// names each field once: a selection naming one twice would come back
// holding it once (a meta keys its cells by field), which the caller did
// not ask for, so it is refused as a key named twice is.
func checkPartFields(partition string, fields []string) error {
	if err := checkName(namePartition, partition); err != nil {
		return err
	}
	if err := checkNames(nameField, fields); err != nil {
		return err
	}
	if dups := engine.RepeatedKeys(fields); dups != nil {
		return fmt.Errorf("field %q appears twice: %w", dups[0], engine.ErrInvalid)
	}
	return nil
}

func checkPartKeys(partition string, keys, fields []string) error {
	if err := checkPartFields(partition, fields); err != nil {
		return err
	}
	return checkNames(nameKey, keys)
}

func checkFetch(req engine.FetchRequest) error {
	if err := checkPartFields(req.Partition, req.Fields); err != nil {
		return err
	}
	if req.Hold && req.Key == "" {
		return fmt.Errorf("a held fetch needs a key (MetaRequest.Key) to acknowledge or give back: %w", engine.ErrInvalid)
	}
	return checkName(nameTask, req.Task)
}

func checkCommitFields(fields []engine.CommitField) error {
	for _, f := range fields {
		if err := checkName(nameField, f.Name); err != nil {
			return err
		}
	}
	return nil
}

func checkCommit(req engine.CommitRequest) error {
	if err := checkName(namePartition, req.Partition); err != nil {
		return err
	}
	return checkCommitFields(req.Fields)
}

func checkCommitKeys(req engine.KeysCommit) error {
	if err := checkPartKeys(req.Partition, req.Keys, nil); err != nil {
		return err
	}
	if err := checkKeyTags(req.Keys, req.Tags); err != nil {
		return err
	}
	return checkCommitFields(req.Fields)
}

// checkTags refuses tags that JSON would change on the way (a name or
// string that is not UTF-8, which encoding/json rewrites) or cannot carry
// (NaN), as a controller in process refuses them (see [engine.Tags.Check]),
// naming the i'th map's owner by who(i) as the controller does.
func checkTags(tags []engine.Tags, who func(int) string) error {
	for i, t := range tags {
		if err := t.Check(); err != nil {
			return fmt.Errorf("%s: %w", who(i), err)
		}
	}
	return nil
}

// checkKeyTags is checkTags for tags[i] of keys[i]: "key %q", as the
// controller (and a one-key put in its process) names them.
func checkKeyTags(keys []string, tags []engine.Tags) error {
	return checkTags(tags, func(i int) string { return fmt.Sprintf("key %q", keys[i]) })
}

// checkBatchNames refuses a batch whose field names the wire cannot carry.
func checkBatchNames(b *engine.Batch) error {
	if b == nil {
		return nil
	}
	for _, f := range b.Fields() {
		if err := checkName(nameField, f.Name); err != nil {
			return err
		}
	}
	return nil
}

// checksNames is implemented by the metadata services that check names
// themselves.
type checksNames interface{ checksNames() }

func (*RemoteMeta) checksNames() {}
func (checkedMeta) checksNames() {}

// checkedMeta checks the names of every request before passing it to the
// metadata service it wraps.
type checkedMeta struct{ m MetaService }

var _ MetaService = checkedMeta{}

func invalid(op string, err error) error { return &engine.OpError{Op: op, Err: err} }

func (c checkedMeta) Insert(ctx context.Context, partition string, n int, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, invalid("insert", err)
	}
	return c.m.Insert(ctx, partition, n, fields)
}

func (c checkedMeta) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	if err := checkFetch(req); err != nil {
		return nil, invalid("fetch", err)
	}
	return c.m.Fetch(ctx, req)
}

func (c checkedMeta) ForceFetch(ctx context.Context, partition string, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, invalid("force fetch", err)
	}
	return c.m.ForceFetch(ctx, partition, fields)
}

func (c checkedMeta) RowsMeta(ctx context.Context, partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return nil, invalid("rows meta", err)
	}
	return c.m.RowsMeta(ctx, partition, indexes, fields)
}

func (c checkedMeta) Commit(ctx context.Context, req engine.CommitRequest) error {
	if err := checkCommit(req); err != nil {
		return invalid("commit", err)
	}
	return c.m.Commit(ctx, req)
}

func (c checkedMeta) ResolveKeys(ctx context.Context, partition string, keys, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	if err := checkPartKeys(partition, keys, fields); err != nil {
		return nil, nil, invalid("resolve keys", err)
	}
	return c.m.ResolveKeys(ctx, partition, keys, fields, create)
}

func (c checkedMeta) CommitKeys(ctx context.Context, req engine.KeysCommit) (engine.KeysCommitted, error) {
	if err := checkCommitKeys(req); err != nil {
		return engine.KeysCommitted{}, invalid("commit keys", err)
	}
	return c.m.CommitKeys(ctx, req)
}

func (c checkedMeta) KeysOf(ctx context.Context, partition string, indexes []uint64) ([]string, error) {
	if err := checkName(namePartition, partition); err != nil {
		return nil, invalid("keys of", err)
	}
	return c.m.KeysOf(ctx, partition, indexes)
}

func (c checkedMeta) SetTags(ctx context.Context, partition string, indexes []uint64, tags []engine.Tags) error {
	if err := checkName(namePartition, partition); err != nil {
		return invalid("set tags", err)
	}
	return c.m.SetTags(ctx, partition, indexes, tags)
}

func (c checkedMeta) ListKeys(ctx context.Context, partition string) (map[string][]engine.KeyInfo, error) {
	if err := checkUTF8(namePartition, partition); err != nil {
		return nil, invalid("list keys", err)
	}
	return c.m.ListKeys(ctx, partition)
}

func (c checkedMeta) ProductionStatus(ctx context.Context, partition string, fields []string) (engine.ProductionStatus, error) {
	if err := checkPartFields(partition, fields); err != nil {
		return engine.ProductionStatus{}, invalid("production status", err)
	}
	return c.m.ProductionStatus(ctx, partition, fields)
}

func (c checkedMeta) ConsumptionStatus(ctx context.Context, partition, task string) (engine.ConsumptionStatus, error) {
	if err := checkPartFields(partition, nil); err != nil {
		return engine.ConsumptionStatus{}, invalid("consumption status", err)
	}
	if err := checkName(nameTask, task); err != nil {
		return engine.ConsumptionStatus{}, invalid("consumption status", err)
	}
	return c.m.ConsumptionStatus(ctx, partition, task)
}

func (c checkedMeta) ResetConsumption(ctx context.Context, partition, task string) error {
	if err := checkPartFields(partition, nil); err != nil {
		return invalid("reset consumption", err)
	}
	if err := checkUTF8(nameTask, task); err != nil {
		return invalid("reset consumption", err)
	}
	return c.m.ResetConsumption(ctx, partition, task)
}

func (c checkedMeta) ClearRows(ctx context.Context, partition string, indexes []uint64) error {
	if err := checkName(namePartition, partition); err != nil {
		return invalid("clear rows", err)
	}
	return c.m.ClearRows(ctx, partition, indexes)
}

func (c checkedMeta) ClearKeys(ctx context.Context, partition string, keys []string) error {
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return invalid("clear keys", err)
	}
	return c.m.ClearKeys(ctx, partition, keys)
}

func (c checkedMeta) ClearPartition(ctx context.Context, partition string) error {
	if err := checkName(namePartition, partition); err != nil {
		return invalid("clear partition", err)
	}
	return c.m.ClearPartition(ctx, partition)
}

func (c checkedMeta) Partitions(ctx context.Context) ([]string, error) { return c.m.Partitions(ctx) }

func (c checkedMeta) Stats(ctx context.Context, partition string) (engine.PartitionStats, error) {
	if err := checkName(namePartition, partition); err != nil {
		return engine.PartitionStats{}, invalid("stats", err)
	}
	return c.m.Stats(ctx, partition)
}

func (c checkedMeta) Fields(ctx context.Context, partition string) ([]engine.FieldStats, error) {
	if err := checkName(namePartition, partition); err != nil {
		return nil, invalid("fields", err)
	}
	return c.m.Fields(ctx, partition)
}
