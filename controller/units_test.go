package controller

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/engine"
)

func alive(us []engine.UnitInfo) map[engine.UnitID]bool {
	out := map[engine.UnitID]bool{}
	for _, u := range us {
		out[u.ID] = u.Alive
	}
	return out
}

func TestRegistryLiveness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRegistry(5 * time.Second)
		a, err := r.Register(engine.UnitInfo{Host: "h1", Addrs: []string{"unix:///a"}, Name: "a", Capacity: 100})
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.Register(engine.UnitInfo{Host: "h2", Name: "b"})
		if err != nil {
			t.Fatal(err)
		}
		if a != 1 || b != 2 {
			t.Fatalf("ids = %d, %d; want 1, 2", a, b)
		}
		start := time.Now()
		for range 10 {
			time.Sleep(time.Second)
			if err := r.Heartbeat(engine.UnitInfo{ID: a, Capacity: 100, Used: 40, Segments: 2, PageSize: 4096, HugePages: true}); err != nil {
				t.Fatal(err)
			}
		}
		want := map[engine.UnitID]bool{1: true, 2: false}
		if diff := cmp.Diff(want, alive(r.Units())); diff != "" {
			t.Fatalf("liveness after 10 s (-want +got):\n%s", diff)
		}
		u, ok := r.Unit(a)
		wantA := engine.UnitInfo{ID: 1, Host: "h1", Addrs: []string{"unix:///a"}, Name: "a", Capacity: 100, Used: 40, Segments: 2,
			PageSize: 4096, HugePages: true, LastHeartbeat: start.Add(10 * time.Second), Alive: true}
		if diff := cmp.Diff(wantA, u); !ok || diff != "" {
			t.Fatalf("unit %d (-want +got):\n%s", a, diff)
		}
		// A dead unit comes back with a heartbeat or a re-registration.
		if got, err := r.Register(engine.UnitInfo{ID: b, Host: "h2", Name: "b2"}); err != nil || got != b {
			t.Fatalf("re-register %d = %d, %v", b, got, err)
		}
		if u, _ := r.Unit(b); !u.Alive || u.Name != "b2" {
			t.Fatalf("re-registered unit = %+v, want alive and renamed", u)
		}
		// The boundary: alive at exactly the timeout, dead just after.
		time.Sleep(5 * time.Second)
		if u, _ := r.Unit(b); !u.Alive {
			t.Fatal("unit dead at exactly the timeout")
		}
		time.Sleep(time.Nanosecond)
		if u, _ := r.Unit(b); u.Alive {
			t.Fatal("unit alive after the timeout")
		}
	})
}

func TestRegistryIDs(t *testing.T) {
	r := NewRegistry(time.Second)
	for want := engine.UnitID(1); want <= 3; want++ {
		if got, err := r.Register(engine.UnitInfo{Host: "h"}); err != nil || got != want {
			t.Fatalf("register = %d, %v; want %d", got, err, want)
		}
	}
	// An unknown id (a controller restarted from a checkpoint) is adopted
	// and later ids skip past it.
	if got, err := r.Register(engine.UnitInfo{ID: 10, Host: "h"}); err != nil || got != 10 {
		t.Fatalf("adopt 10 = %d, %v", got, err)
	}
	if got, _ := r.Register(engine.UnitInfo{Host: "h"}); got != 11 {
		t.Fatalf("after adopting 10, new id = %d, want 11", got)
	}
	// The largest id can be adopted; nothing is left to assign after it.
	if got, err := r.Register(engine.UnitInfo{ID: ^engine.UnitID(0), Host: "h"}); err != nil || got != ^engine.UnitID(0) {
		t.Fatalf("adopt max = %d, %v", got, err)
	}
	if _, err := r.Register(engine.UnitInfo{Host: "h"}); !errors.Is(err, engine.ErrCapacity) {
		t.Fatalf("register after max id: %v, want ErrCapacity", err)
	}
}

func TestRegistryBadInput(t *testing.T) {
	r := NewRegistry(time.Minute)
	if _, err := r.Register(engine.UnitInfo{ID: 1, Host: "h1"}); err != nil {
		t.Fatal(err)
	}
	long := string(make([]byte, maxUnitString+1))
	for _, tc := range []struct {
		name string
		u    engine.UnitInfo
	}{
		{"negative capacity", engine.UnitInfo{Capacity: -1}},
		{"empty address", engine.UnitInfo{Addrs: []string{""}}},
		{"too many addresses", engine.UnitInfo{Addrs: make([]string, maxUnitAddrs+1)}},
		{"long name", engine.UnitInfo{Name: long}},
		{"id alive on another host", engine.UnitInfo{ID: 1, Host: "h2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Register(tc.u); !errors.Is(err, engine.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
	if err := r.Heartbeat(engine.UnitInfo{ID: 7}); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("heartbeat of an unknown unit: %v, want ErrNotFound", err)
	}
	if err := r.Heartbeat(engine.UnitInfo{ID: 1, Used: -5}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("heartbeat with negative figures: %v, want ErrInvalid", err)
	}
}

func TestRegistryFullEvictsDead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRegistry(time.Second)
		for range MaxUnits {
			if _, err := r.Register(engine.UnitInfo{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Register(engine.UnitInfo{}); !errors.Is(err, engine.ErrCapacity) {
			t.Fatalf("register into a full registry of live units: %v, want ErrCapacity", err)
		}
		time.Sleep(2 * time.Second)
		id, err := r.Register(engine.UnitInfo{})
		if err != nil {
			t.Fatalf("register after every unit died: %v", err)
		}
		if id != MaxUnits+1 {
			t.Fatalf("new id = %d, want %d (ids are never reused)", id, MaxUnits+1)
		}
		if n := len(r.Units()); n != MaxUnits {
			t.Fatalf("%d units after eviction, want %d", n, MaxUnits)
		}
	})
}
