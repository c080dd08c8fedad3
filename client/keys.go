package client

// The KeyService side of the name checks (names.go): a checkedMeta
// passes the calls on to the service it wraps, if that service has them.

import (
	"context"
	"fmt"

	"github.com/tqgo/tq/engine"
)

var (
	_ KeyService = checkedMeta{}
	_ KeyService = (*RemoteMeta)(nil)
)

// checkTagNames refuses an empty tag name, or one that is not valid
// UTF-8.
func checkTagNames(names []string) error {
	if len(names) == 0 {
		return fmt.Errorf("no tag names: %w", engine.ErrInvalid)
	}
	return checkNames(nameTag, names)
}

func checkSwap(req engine.TagSwap) error {
	if err := checkPartKeys(req.Partition, []string{req.Key}, nil); err != nil {
		return err
	}
	if err := checkName(nameTag, req.Name); err != nil {
		return err
	}
	if err := engine.CheckTagValue(req.Old); err != nil {
		return fmt.Errorf("tag %q: old value: %w", req.Name, err)
	}
	if err := engine.CheckTagValue(req.New); err != nil {
		return fmt.Errorf("tag %q: new value: %w", req.Name, err)
	}
	return nil
}

func checkChanges(req engine.ChangesRequest) error { return checkName(namePartition, req.Partition) }

// keys returns the KeyService of the wrapped service, or an error naming
// what it lacks.
func (c checkedMeta) keys(op string) (KeyService, error) {
	ks, ok := c.m.(KeyService)
	if !ok {
		return nil, invalid(op, fmt.Errorf("metadata service %T has no tag or change-feed calls: %w", c.m, engine.ErrNotSupported))
	}
	return ks, nil
}

func (c checkedMeta) ListKeysWhere(ctx context.Context, partition string, where engine.TagFilter) (map[string][]engine.KeyInfo, error) {
	if err := checkUTF8(namePartition, partition); err != nil {
		return nil, invalid("list keys", err)
	}
	if err := where.Validate(); err != nil {
		return nil, invalid("list keys", err)
	}
	ks, err := c.keys("list keys")
	if err != nil {
		return nil, err
	}
	return ks.ListKeysWhere(ctx, partition, where)
}

func (c checkedMeta) DeleteTags(ctx context.Context, partition string, keys, names []string) ([]engine.Tags, error) {
	if err := checkPartKeys(partition, keys, nil); err != nil {
		return nil, invalid("delete tags", err)
	}
	if err := checkTagNames(names); err != nil {
		return nil, invalid("delete tags", err)
	}
	ks, err := c.keys("delete tags")
	if err != nil {
		return nil, err
	}
	return ks.DeleteTags(ctx, partition, keys, names)
}

func (c checkedMeta) CompareAndSetTag(ctx context.Context, req engine.TagSwap) (engine.TagSwapped, error) {
	if err := checkSwap(req); err != nil {
		return engine.TagSwapped{}, invalid("compare and set tag", err)
	}
	ks, err := c.keys("compare and set tag")
	if err != nil {
		return engine.TagSwapped{}, err
	}
	return ks.CompareAndSetTag(ctx, req)
}

func (c checkedMeta) KeyChanges(ctx context.Context, req engine.ChangesRequest) (engine.KeyChanges, error) {
	if err := checkChanges(req); err != nil {
		return engine.KeyChanges{}, invalid("key changes", err)
	}
	ks, err := c.keys("key changes")
	if err != nil {
		return engine.KeyChanges{}, err
	}
	return ks.KeyChanges(ctx, req)
}
