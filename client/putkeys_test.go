package client_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// keysOf lists a partition's keys in creation order.
func keysOf(t *testing.T, e *embedded.Cluster, partition string) []string {
	t.Helper()
	l, err := e.Client.Meta().ListKeys(context.Background(), partition)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range l[partition] {
		out = append(out, k.Key)
	}
	return out
}

// TestPutKeys runs a KV put on both paths: one unit known up front (local
// first) and hash placement over three units, where the keys are resolved
// before the write.
func TestPutKeys(t *testing.T) {
	ctx := context.Background()
	for _, place := range []client.Placement{client.LocalFirst, client.Hash} {
		t.Run(place.String(), func(t *testing.T) {
			e := newEmbedded(t, place, 3)
			c := e.Client
			keys := []string{"a", "b", "c", "d", "e", "f"}
			done, err := c.PutKeys(ctx, "p", keys, ints(t, "x", []int64{0, 1, 2, 3, 4, 5}), []engine.Tags{{"n": 1}, nil, nil, nil, nil, nil})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(done.Fields, []string{"x"}) || done.Tags[0]["n"] != 1 || done.Tags[1] != nil {
				t.Fatalf("put: %+v", done)
			}
			m, _, err := c.Meta().ResolveKeys(ctx, "p", []string{"f", "a"}, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.GetCopy(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			if v := values(t, got, "x"); !slices.Equal(v, []int64{5, 0}) {
				t.Fatalf("read back %v", v)
			}
			spread := map[engine.UnitID]bool{}
			m, _, _ = c.Meta().ResolveKeys(ctx, "p", keys, nil, false)
			for _, l := range m.Cells["x"] {
				spread[l.Unit] = true
			}
			if want := map[client.Placement]int{client.LocalFirst: 1, client.Hash: 3}[place]; len(spread) != want {
				t.Errorf("rows on %d units, want %d", len(spread), want)
			}

			// Overwrite two keys, add one: the replaced cells are freed.
			before := used(e)
			if _, err := c.PutKeys(ctx, "p", []string{"a", "b", "g"}, ints(t, "x", []int64{10, 11, 12}), nil); err != nil {
				t.Fatal(err)
			}
			if u := used(e); u <= before {
				t.Errorf("used %d after adding a key, was %d", u, before)
			}

			// A dtype conflict leaves nothing behind: no key, no bytes.
			before = used(e)
			fc, _ := engine.DenseOf([]float32{1, 2})
			f32 := engine.MustBatch(engine.Field{Name: "x", Col: fc})
			_, err = c.PutKeys(ctx, "p", []string{"h", "a"}, f32, nil)
			if !errors.Is(err, engine.ErrDTypeMismatch) {
				t.Fatalf("dtype conflict: %v", err)
			}
			if u := used(e); u != before {
				t.Errorf("used %d after a refused put, was %d", u, before)
			}
			if k := keysOf(t, e, "p"); !slices.Equal(k, []string{"a", "b", "c", "d", "e", "f", "g"}) {
				t.Errorf("keys after a refused put: %v", k)
			}

			// Tags only.
			if done, err = c.PutKeys(ctx, "p", []string{"t"}, nil, []engine.Tags{{"only": "tags"}}); err != nil || done.Fields != nil {
				t.Fatalf("tags only: %+v %v", done, err)
			}
		})
	}
}

func TestPutKeysInvalid(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	x := ints(t, "x", []int64{1, 2})
	for _, tc := range []struct {
		name string
		keys []string
		b    *engine.Batch
		tags []engine.Tags
	}{
		{"no keys", nil, x, nil},
		{"nothing", []string{"a"}, nil, nil},
		{"row count", []string{"a"}, x, nil},
		{"tag count", []string{"a", "b"}, x, []engine.Tags{nil}},
		{"duplicate key", []string{"a", "a"}, x, nil},
		{"empty key", []string{"a", ""}, x, nil},
	} {
		if _, err := e.Client.PutKeys(ctx, "p", tc.keys, tc.b, tc.tags); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
		}
	}
	if u := used(e); u != 0 {
		t.Errorf("%d bytes used after refused puts", u)
	}
	if k := keysOf(t, e, "p"); len(k) != 0 {
		t.Errorf("keys after refused puts: %v", k)
	}
}

// TestReservePutKeysHash reserves through the resolving path: the keys
// exist from the reservation on, and an abort or a refused commit clears
// exactly the ones it created.
func TestReservePutKeysHash(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.Hash, 2)
	c := e.Client
	if _, err := c.PutKeys(ctx, "p", []string{"old"}, ints(t, "x", []int64{7}), nil); err != nil {
		t.Fatal(err)
	}
	spec := client.FieldSpec{Name: "x", DType: engine.Int64}
	b, err := c.ReservePutKeys(ctx, "p", []string{"old", "new"}, nil, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if k := keysOf(t, e, "p"); !slices.Equal(k, []string{"old"}) {
		t.Errorf("keys after abort: %v", k)
	}

	// A dtype conflict is refused before the caller fills anything.
	if _, err := c.ReservePutKeys(ctx, "p", []string{"new"}, nil, client.FieldSpec{Name: "x", DType: engine.Float32}); !errors.Is(err, engine.ErrDTypeMismatch) {
		t.Fatalf("reserve with another dtype: %v", err)
	}
	if k := keysOf(t, e, "p"); !slices.Equal(k, []string{"old"}) {
		t.Errorf("keys after a refused reservation: %v", k)
	}

	b, err = c.ReservePutKeys(ctx, "p", []string{"old", "new"}, []engine.Tags{nil, {"t": 1}}, spec)
	if err != nil {
		t.Fatal(err)
	}
	v, err := engine.Values[int64](b.Column("x"))
	if err != nil {
		t.Fatal(err)
	}
	copy(v, []int64{8, 9})
	done, err := b.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(done.Fields, []string{"x"}) || done.Tags[1]["t"] != 1 {
		t.Fatalf("commit: %+v", done)
	}
	m, _, err := c.Meta().ResolveKeys(ctx, "p", []string{"new", "old"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetCopy(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if x := values(t, got, "x"); !slices.Equal(x, []int64{9, 8}) {
		t.Fatalf("read back %v", x)
	}
}

// The dtype cache only spares round trips: a stale entry lets a put with
// the wrong dtype through to Commit, which refuses it and leaves nothing;
// a mismatch against the cache asks the controller before refusing.
func TestReservePutKeysDTypeCache(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	put := func(dt engine.DType) error {
		b, err := c.ReservePutKeys(ctx, "p", []string{"k"}, nil, client.FieldSpec{Name: "x", DType: dt, Shape: engine.Shape{2}})
		if err != nil {
			return err
		}
		_, err = b.Commit(ctx)
		return err
	}
	if err := put(engine.Float32); err != nil { // the cache learns x is float32
		t.Fatal(err)
	}
	// Cleared and refilled with int64 behind the cache's back.
	if err := c.ClearPartition(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutKeys(ctx, "p", []string{"j"}, ints(t, "x", []int64{1, 2}, 2), nil); err != nil {
		t.Fatal(err)
	}
	before := used(e)
	if err := put(engine.Float32); !errors.Is(err, engine.ErrDTypeMismatch) {
		t.Fatalf("stale cache: %v, want the commit refused", err)
	}
	if u := used(e); u != before {
		t.Errorf("used %d after a refused commit, was %d", u, before)
	}
	if k := keysOf(t, e, "p"); !slices.Equal(k, []string{"j"}) {
		t.Errorf("keys after a refused commit: %v", k)
	}
	// A mismatch with the cache is checked with the controller: int64 is
	// what x holds now.
	if err := put(engine.Int64); err != nil {
		t.Fatalf("put matching the partition but not the cache: %v", err)
	}
}
