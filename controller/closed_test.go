package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestClosedRefusesCalls: after Close every call that can fail answers an
// error wrapping engine.ErrClosed that says the controller is closed, on a
// partition that exists as on one that does not, in memory as with a
// journal; calls with no error answer nothing.
func TestClosedRefusesCalls(t *testing.T) {
	for _, durable := range []bool{false, true} {
		name := "memory"
		if durable {
			name = "durable"
		}
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			if durable {
				cfg.Dir = t.TempDir()
			}
			c := newController(t, cfg)
			insert(t, c, "p", 4, "x")
			_, _, err := c.ResolveKeysCreated("p", []string{"k"}, nil, true)
			require.NoError(t, err)
			fetch(t, c, "p", "t", 1, "x")
			uid, err := c.Units().Register(engine.UnitInfo{Incarnation: 5, Capacity: 1 << 30}, true)
			require.NoError(t, err)
			require.NoError(t, c.Close())

			dense := []engine.CommitField{{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}}}
			calls := map[string]func(part string) error{
				"CreatePartition": func(p string) error { _, err := c.CreatePartition(p); return err },
				"Insert":          func(p string) error { _, err := c.Insert(p, 1, []string{"x"}); return err },
				"Fetch": func(p string) error {
					_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: p, Task: "t2", Fields: []string{"x"}, BatchSize: 1})
					return err
				},
				"Fetch wait": func(p string) error {
					_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: p, Task: "t2", Fields: []string{"x"}, BatchSize: 100, Wait: true})
					return err
				},
				"Unconsume":     func(p string) error { return c.Unconsume(p, "t", "f") },
				"UnconsumeRows": func(p string) error { return c.UnconsumeRows(p, "t", "f", []uint64{0}) },
				"Acknowledge":   func(p string) error { return c.Acknowledge(p, "t", "f") },
				"ForceFetch":    func(p string) error { _, err := c.ForceFetch(p, []string{"x"}); return err },
				"RowsMeta":      func(p string) error { _, err := c.RowsMeta(p, []uint64{0}, []string{"x"}); return err },
				"Commit": func(p string) error {
					_, err := c.Commit(engine.CommitRequest{Partition: p, Indexes: []uint64{0}, Fields: dense})
					return err
				},
				"CommitKeys": func(p string) error {
					_, err := c.CommitKeys(engine.KeysCommit{Partition: p, Keys: []string{"k2"}, Fields: dense})
					return err
				},
				"ResolveKeys":        func(p string) error { _, err := c.ResolveKeys(p, []string{"k"}, nil, false); return err },
				"ResolveKeys create": func(p string) error { _, err := c.ResolveKeys(p, []string{"k3"}, nil, true); return err },
				"ResolveKeysShared":  func(p string) error { _, _, err := c.ResolveKeysShared(p, []string{"k"}, nil, false); return err },
				"KeysOf":             func(p string) error { _, err := c.KeysOf(p, []uint64{0}); return err },
				"SetTags":            func(p string) error { return c.SetTags(p, []uint64{0}, []engine.Tags{{"a": int64(1)}}) },
				"DeleteTags":         func(p string) error { _, err := c.DeleteTags(p, []string{"k"}, []string{"a"}); return err },
				"CompareAndSetTag": func(p string) error {
					_, err := c.CompareAndSetTag(engine.TagSwap{Partition: p, Key: "k", Name: "a", New: int64(2)})
					return err
				},
				"ListKeysWhere":     func(p string) error { _, err := c.ListKeysWhere(p, nil); return err },
				"ListKeysPage":      func(p string) error { _, _, err := c.ListKeysPage(p, nil, 0); return err },
				"ListKeysPage all":  func(string) error { _, _, err := c.ListKeysPage("", nil, 0); return err },
				"ProductionStatus":  func(p string) error { _, err := c.ProductionStatus(p, []string{"x"}); return err },
				"ConsumptionStatus": func(p string) error { _, err := c.ConsumptionStatus(p, "t"); return err },
				"ResetConsumption":  func(p string) error { return c.ResetConsumption(p, "t") },
				"ClearRows":         func(p string) error { _, err := c.ClearRows(p, []uint64{0}); return err },
				"ClearKeys":         func(p string) error { _, err := c.ClearKeys(p, []string{"k"}); return err },
				"ClearFields":       func(p string) error { _, _, err := c.ClearFields(p, []string{"k"}, []string{"x"}); return err },
				"ClearPartition":    func(p string) error { _, err := c.ClearPartition(p); return err },
				"Fields":            func(p string) error { _, err := c.Fields(p); return err },
				"Stats":             func(p string) error { _, err := c.Stats(p); return err },
				"Tasks":             func(p string) error { _, err := c.Tasks(p); return err },
				"KeyCount":          func(p string) error { _, err := c.KeyCount(p); return err },
				"ScanKeys":          func(p string) error { _, _, err := c.ScanKeys(p, 0, 10); return err },
				"MarkDone":          func(p string) error { return c.MarkDone(p) },
				"MoveCells":         func(p string) error { _, _, err := c.MoveCells(p, nil); return err },
				"KeyChanges": func(p string) error {
					_, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: p})
					return err
				},
				"KeyChanges wait": func(p string) error {
					_, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: p, Wait: true})
					return err
				},
				"WaitRead":    func(p string) error { return c.WaitRead(context.Background(), p, []string{"k"}) },
				"WaitIndex":   func(string) error { return c.WaitIndex(context.Background(), 1) },
				"WaitDurable": func(string) error { return c.WaitDurable(context.Background()) },
				"Save":        func(string) error { return c.Save(t.TempDir()) },
				"Load":        func(string) error { _, err := c.Load(t.TempDir()); return err },
				"Register": func(string) error {
					_, err := c.Units().Register(engine.UnitInfo{Incarnation: 6, Capacity: 1 << 30}, true)
					return err
				},
				"Heartbeat": func(string) error {
					return c.Units().Heartbeat(engine.UnitInfo{ID: uid, Incarnation: 5, Capacity: 1 << 30})
				},
				"DrainUnit": func(string) error { _, err := c.DrainUnit(uid, false); return err },
				"UnitCells": func(string) error { _, _, err := c.UnitCells(uid, nil, 0, 0); return err },
				"Reconcile": func(string) error {
					_, err := c.Reconcile(ReconcileRequest{Unit: uid, Incarnation: 5})
					return err
				},
			}
			for op, call := range calls {
				for _, part := range []string{"p", "other"} {
					done := make(chan error, 1)
					go func() { done <- call(part) }()
					select {
					case err := <-done:
						if !errors.Is(err, engine.ErrClosed) || !strings.Contains(err.Error(), "controller closed") {
							t.Errorf("%s of partition %q after Close: got %v, want an error wrapping %v that says the controller is closed", op, part, err, engine.ErrClosed)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("%s of partition %q after Close: no answer", op, part)
					}
				}
			}
			require.Empty(t, c.Partitions(), "Partitions after Close")
			require.Empty(t, c.ListKeys("p"), "ListKeys after Close")
			require.Equal(t, []bool{false}, c.HasKeys("p", []string{"k"}), "HasKeys after Close")
			_, found := c.KeyCell("p", "k", "x")
			require.False(t, found, "KeyCell after Close")
		})
	}
}

// TestClosedWakesWaiters: a fetch and a change feed blocked before Close
// return ErrClosed once it runs.
func TestClosedWakesWaiters(t *testing.T) {
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	_, _, err := c.ResolveKeysCreated("p", []string{"k"}, nil, true)
	require.NoError(t, err)
	feed, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p"})
	require.NoError(t, err)
	errs := make(chan error, 3)
	go func() {
		_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
		errs <- err
	}()
	go func() {
		_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "absent", Task: "t", Fields: []string{"x"}, BatchSize: 1, Wait: true})
		errs <- err
	}()
	go func() {
		_, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p", Cursor: feed.Cursor, Wait: true})
		errs <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for (c.BlockedFetches() < 2 || c.changeWaiters.Load() < 1) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, c.Close())
	for range 3 {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, engine.ErrClosed)
		case <-time.After(10 * time.Second):
			t.Fatal("a call blocked before Close did not return")
		}
	}
}
