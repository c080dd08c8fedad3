package client_test

import (
	"context"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// Over shared memory, Get lends read-only views by default: nothing is
// copied, a write through a view faults, the unit keeps the memory until
// Release even when the rows are cleared, and CopyGets (or GetCopy) gives
// columns the caller owns. Batches of at most shm.InlineMax bytes come as
// copies.
func TestGetViewsByDefaultOverShm(t *testing.T) {
	ctx := context.Background()
	c, u := shmClient(t, client.DefaultConfig())
	vals := make([]float32, 3*4096) // 3 rows of 16 KiB: lent as views
	for i := range vals {
		vals[i] = float32(i)
	}
	col, err := engine.DenseOf(vals, 4096)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := c.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, meta)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Aliased() {
		t.Fatal("a get over shm copied")
	}
	if st := u.Stats(); st.Leases == 0 {
		t.Fatal("the view holds no lease on the unit")
	}
	view, _ := engine.Values[float32](got.Col("x"))
	if !slices.Equal(view, vals) {
		t.Fatalf("view %v, put %v", view, vals)
	}
	if !faults(func() { view[0] = 42 }) {
		t.Fatal("a write through a view did not fault")
	}

	// Cleared rows stay readable, unchanged, until Release.
	if err := c.Clear(ctx, meta); err != nil {
		t.Fatal(err)
	}
	nines, _ := engine.DenseOf(slices.Repeat([]float32{9}, len(vals)), 4096)
	if _, err := c.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: nines})); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(view, vals) {
		t.Fatalf("after clear and a new put the view reads %v", view)
	}
	got.Release()
	got.Release() // idempotent
	deadline := time.Now().Add(5 * time.Second)
	for u.Stats().Leases != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("leases after Release: %d", u.Stats().Leases)
		}
		time.Sleep(time.Millisecond)
	}

	c2, _ := shmClient(t, client.Config{Placement: client.LocalFirst, CopyGets: true})
	meta2, err := c2.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	if err != nil {
		t.Fatal(err)
	}
	for name, get := range map[string]func() (*engine.Batch, error){
		"CopyGets": func() (*engine.Batch, error) { return c2.Get(ctx, meta2) },
		"GetCopy":  func() (*engine.Batch, error) { return c2.GetCopy(ctx, meta2) },
	} {
		b, err := get()
		if err != nil {
			t.Fatal(err)
		}
		owned, _ := engine.Values[float32](b.Col("x"))
		if b.Aliased() || faults(func() { owned[0] = 42 }) {
			t.Fatalf("%s: not a writable copy", name)
		}
		b.Release() // a no-op for owned columns
	}

	// A small batch comes in the unit's answer: a copy, no lease.
	small, _ := engine.DenseOf(vals[:16], 2)
	meta3, err := c.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: small}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Get(ctx, meta3)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := engine.Values[float32](b.Col("x")); b.Aliased() || !slices.Equal(got, vals[:16]) {
		t.Fatalf("small get: aliased %v, %v", b.Aliased(), got)
	}
	// The unit holds a lease of its own while it writes the answer, and
	// lets it go once the answer is out (the client may have it already):
	// the client holds none, so the count drops to 0.
	deadline = time.Now().Add(5 * time.Second)
	for u.Stats().Leases != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("leases after a small get: %d", u.Stats().Leases)
		}
		time.Sleep(time.Millisecond)
	}
}

// faults reports whether f hit a memory fault.
func faults(f func()) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { faulted = recover() != nil }()
	f()
	return false
}
