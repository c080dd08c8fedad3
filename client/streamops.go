package client

import (
	"context"
	"fmt"

	"github.com/tqgo/tq/engine"
)

// StreamService is what a streaming loader needs from the controller
// beyond [MetaService]: giving back the rows of a keyed fetch it will not
// use, keeping those of a held one it will, and the producer's "no more
// rows" marker. [RemoteMeta] and the
// embedded adapter implement it; [Client.GiveBack] and [Client.MarkDone]
// find it by type assertion, and without it they fail with
// [engine.ErrNotSupported].
type StreamService interface {
	// Unconsume gives the rows the fetch named key took back to task.
	Unconsume(ctx context.Context, partition, task, key string) error
	// UnconsumeRows gives back indexes, some of the rows the fetch named
	// key took, to task; the fetch keeps the others.
	UnconsumeRows(ctx context.Context, partition, task, key string, indexes []uint64) error
	// Acknowledge keeps the rows the held fetch named key took for task
	// (see [engine.FetchRequest.Hold]).
	Acknowledge(ctx context.Context, partition, task, key string) error
	// MarkDone says the partition's producer will add no more rows.
	MarkDone(ctx context.Context, partition string) error
}

var (
	_ StreamService = (*RemoteMeta)(nil)
	_ StreamService = checkedMeta{}
)

func (c checkedMeta) stream(op string) (StreamService, error) {
	ss, ok := c.m.(StreamService)
	if !ok {
		return nil, invalid(op, fmt.Errorf("metadata service %T cannot give back fetches or mark partitions done: %w", c.m, engine.ErrNotSupported))
	}
	return ss, nil
}

// keyedStream checks the partition and task of an op on a keyed fetch
// (unconsume, acknowledge) and returns the service to send it to.
func (c checkedMeta) keyedStream(op, partition, task string) (StreamService, error) {
	if err := checkPartFields(partition, nil); err != nil {
		return nil, invalid(op, err)
	}
	if err := checkName(nameTask, task); err != nil {
		return nil, invalid(op, err)
	}
	return c.stream(op)
}

func (c checkedMeta) Unconsume(ctx context.Context, partition, task, key string) error {
	ss, err := c.keyedStream("unconsume", partition, task)
	if err != nil {
		return err
	}
	return ss.Unconsume(ctx, partition, task, key)
}

func (c checkedMeta) UnconsumeRows(ctx context.Context, partition, task, key string, indexes []uint64) error {
	ss, err := c.keyedStream("unconsume", partition, task)
	if err != nil {
		return err
	}
	return ss.UnconsumeRows(ctx, partition, task, key, indexes)
}

func (c checkedMeta) Acknowledge(ctx context.Context, partition, task, key string) error {
	ss, err := c.keyedStream("acknowledge", partition, task)
	if err != nil {
		return err
	}
	return ss.Acknowledge(ctx, partition, task, key)
}

// canAcknowledge reports whether c's metadata service can settle a held
// fetch. A hold it cannot settle would keep the task's fetches from
// ending until the controller gave the rows back (HeldFetchTTL), to be
// served again while the caller uses them.
func (c *Client) canAcknowledge() bool {
	m := c.meta
	if cm, ok := m.(checkedMeta); ok {
		m = cm.m
	}
	_, ok := m.(StreamService)
	return ok
}

func (c checkedMeta) MarkDone(ctx context.Context, partition string) error {
	if err := checkPartFields(partition, nil); err != nil {
		return invalid("mark done", err)
	}
	ss, err := c.stream("mark done")
	if err != nil {
		return err
	}
	return ss.MarkDone(ctx, partition)
}

// GiveBack gives the rows of the fetch named key (a [MetaRequest] with
// that Key) back to task: they become fetchable again, and the fetch, if
// it has not happened yet, never takes rows. Idempotent.
func (c *Client) GiveBack(ctx context.Context, partition, task, key string) error {
	ss, ok := c.meta.(StreamService)
	if !ok {
		return &engine.OpError{Op: "unconsume", Err: fmt.Errorf("metadata service %T cannot give back fetches: %w", c.meta, engine.ErrNotSupported)}
	}
	return ss.Unconsume(ctx, partition, task, key)
}

// GiveBackRows gives back indexes, some of the rows of the fetch named
// key, to task: they become fetchable again, and the fetch keeps the
// others (a held one until [Client.Acknowledge] keeps them or
// [Client.GiveBack] gives them back). For a consumer that used the first
// rows of a batch and stopped: each row is used once. A row the fetch
// took that was cleared since gives nothing back (it is gone), and the
// others still go back; an index the fetch never took is an error
// wrapping [engine.ErrInvalid] naming it, and nothing goes back; a
// controller that cannot give back part of a fetch (its HELLO does not
// list "unconsume_rows") is an error wrapping [engine.ErrNotSupported],
// and nothing is sent. Idempotent.
func (c *Client) GiveBackRows(ctx context.Context, partition, task, key string, indexes []uint64) error {
	ss, ok := c.meta.(StreamService)
	if !ok {
		return &engine.OpError{Op: "unconsume", Err: fmt.Errorf("metadata service %T cannot give back fetches: %w", c.meta, engine.ErrNotSupported)}
	}
	return ss.UnconsumeRows(ctx, partition, task, key, indexes)
}

// Acknowledge keeps the rows of the held fetch named key (a [MetaRequest]
// with that Key and Hold) for task: they are consumed for good, and the
// task's other fetches may be told the partition has nothing left. An
// error wrapping [engine.ErrNotFound] says the rows were given back (by
// this caller, or by the controller once the hold outlived its TTL): the
// caller must not use them. Idempotent. See
// [github.com/tqgo/tq/controller.Controller.Acknowledge].
func (c *Client) Acknowledge(ctx context.Context, partition, task, key string) error {
	ss, ok := c.meta.(StreamService)
	if !ok {
		return &engine.OpError{Op: "acknowledge", Err: fmt.Errorf("metadata service %T cannot acknowledge fetches: %w", c.meta, engine.ErrNotSupported)}
	}
	return ss.Acknowledge(ctx, partition, task, key)
}

// MarkDone says the producer of partition will add no more rows: fetches
// then take short last batches and, with nothing left for their task,
// fail with an error wrapping [engine.ErrDone] (a finite streaming loader
// ends there). See [github.com/tqgo/tq/controller.Controller.MarkDone].
func (c *Client) MarkDone(ctx context.Context, partition string) error {
	ss, ok := c.meta.(StreamService)
	if !ok {
		return &engine.OpError{Op: "mark done", Err: fmt.Errorf("metadata service %T cannot mark partitions done: %w", c.meta, engine.ErrNotSupported)}
	}
	return ss.MarkDone(ctx, partition)
}
