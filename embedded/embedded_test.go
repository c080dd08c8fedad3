package embedded

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

func smallConfig(units int) Config {
	cfg := DefaultConfig()
	cfg.Units = units
	cfg.Storage.Capacity = 8 << 20
	cfg.Storage.SegmentSize = 8 << 20
	return cfg
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		units int
		want  []engine.UnitID
	}{
		{0, []engine.UnitID{1, 2}}, // the default
		{1, []engine.UnitID{1}},
		{3, []engine.UnitID{1, 2, 3}},
	} {
		c, err := New(smallConfig(tc.units))
		if err != nil {
			t.Fatal(err)
		}
		var ids []engine.UnitID
		for _, u := range c.Units {
			ids = append(ids, u.ID())
		}
		if diff := cmp.Diff(tc.want, ids); diff != "" {
			t.Errorf("units %d: unit ids (-want +got):\n%s", tc.units, diff)
		}
		if c.Controller == nil || c.Client == nil {
			t.Errorf("units %d: controller %v, client %v", tc.units, c.Controller, c.Client)
		}
		if err := c.Close(); err != nil {
			t.Errorf("units %d: Close: %v", tc.units, err)
		}
	}
	if _, err := New(smallConfig(-1)); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("-1 storage units: got %v, want ErrInvalid", err)
	}
	bad := smallConfig(1)
	bad.Storage.Capacity = 0
	if _, err := New(bad); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("a storage config NewUnit rejects: got %v, want ErrInvalid", err)
	}
	durable := smallConfig(1)
	durable.Controller.Dir = t.TempDir()
	if _, err := New(durable); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("a durable controller: got %v, want ErrInvalid", err)
	}
}

// TestUnit drives the in-process unit adapter directly: write, views,
// copies, reserve and commit, free.
func TestUnit(t *testing.T) {
	ctx := context.Background()
	cfg := storage.DefaultConfig()
	cfg.Capacity = 8 << 20
	cfg.SegmentSize = 8 << 20
	u, err := storage.NewUnit(5, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	du := Unit(u)
	if du.ID() != 5 || du.Host() != client.HostID() || du.Transport() != "local" {
		t.Fatalf("unit %d on %q over %q, want 5 on %q over local", du.ID(), du.Host(), du.Transport(), client.HostID())
	}

	addrs, err := du.Write(ctx, [][][]byte{{[]byte("ab"), []byte("c")}, {[]byte("xyz!")}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := du.Acquire(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{string(l.Bytes(0)), string(l.Bytes(1))}; !cmp.Equal(got, []string{"abc", "xyz!"}) {
		t.Errorf("views %q, want [abc xyz!]", got)
	}
	if u.Stats().Leases == 0 {
		t.Error("a view holds no lease on the unit")
	}
	l.Release()
	dst := [][]byte{make([]byte, 3), make([]byte, 4)}
	if err := du.ReadInto(ctx, addrs, dst); err != nil {
		t.Fatal(err)
	}
	if got := []string{string(dst[0]), string(dst[1])}; !cmp.Equal(got, []string{"abc", "xyz!"}) {
		t.Errorf("copies %q, want [abc xyz!]", got)
	}

	rv, ok := du.(client.Reserver)
	if !ok {
		t.Fatal("the in-process unit is not a Reserver")
	}
	r, err := rv.ReserveExtents(ctx, []int64{5})
	if err != nil {
		t.Fatal(err)
	}
	copy(r.Buf(0), "hello")
	if err := r.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Abort(ctx); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	one := [][]byte{make([]byte, 5)}
	if err := du.ReadInto(ctx, []engine.RemoteAddr{r.Addr(0)}, one); err != nil || string(one[0]) != "hello" {
		t.Errorf("reserved extent reads %q, %v, want hello", one[0], err)
	}

	if err := du.Free(ctx, append(addrs, r.Addr(0))); err != nil {
		t.Fatal(err)
	}
	if st := u.Stats(); st.Used != 0 || st.Leases != 0 || st.OpenReservations != 0 {
		t.Errorf("after Free: used %d, %d leases, %d open reservations; want none", st.Used, st.Leases, st.OpenReservations)
	}
}

// TestDrainingUnitTakesNoPuts: a client of units in its process, which
// does not list the units, asks the controller on each placement: once a
// unit is draining, no put lands on it (the KV_PUT path of tq serve
// --role all goes through such a client).
func TestDrainingUnitTakesNoPuts(t *testing.T) {
	c, err := New(smallConfig(2))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Controller.DrainUnit(1, true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 8 {
		col, _ := engine.DenseOf([]int64{int64(i)}, 1)
		m, err := c.Client.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
		if err != nil {
			t.Fatal(err)
		}
		if u := m.Cells["x"][0].Unit; u != 2 {
			t.Fatalf("put %d (row %d) placed on unit %d, want 2: unit 1 is draining", i, m.Indexes[0], u)
		}
	}
}
