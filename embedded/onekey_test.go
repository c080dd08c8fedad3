package embedded

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// kvPair is a durable controller with two units of its process, the
// KVData tq serve gives its KV_PUT and KV_GET, and a general client of the
// same units.
func kvPair(t testing.TB) (*controller.Controller, []*storage.Unit, kvData, *client.Client) {
	t.Helper()
	cfg := controller.DefaultConfig()
	cfg.Dir = t.TempDir()
	return kvPairWith(t, cfg)
}

// kvPairWith is kvPair with a controller of cfg.
func kvPairWith(t testing.TB, cfg controller.Config) (*controller.Controller, []*storage.Unit, kvData, *client.Client) {
	t.Helper()
	ctrl, err := controller.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	scfg := storage.DefaultConfig()
	scfg.Capacity, scfg.SegmentSize = 1<<20, 1<<20
	var units []*storage.Unit
	for range 2 {
		u, err := storage.NewUnit(0, scfg)
		require.NoError(t, err)
		t.Cleanup(func() { u.Close() })
		id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: "h", Name: "u", Capacity: scfg.Capacity}, true)
		require.NoError(t, err)
		u.SetID(id)
		units = append(units, u)
	}
	kd, err := KVData(ctrl, units...)
	require.NoError(t, err)
	cl, err := LocalClient(ctrl, units...)
	require.NoError(t, err)
	return ctrl, units, kd.(kvData), cl
}

func used(units []*storage.Unit) int64 {
	var n int64
	for _, u := range units {
		_, got := localUnit{u}.Room()
		n += got
	}
	return n
}

// TestOneKeyMatchesTheGeneralPath: a one-key put and get through the fast
// path store and read what the general client does, for every kind of
// column (bytes, dense, ragged), several fields at once, with tags; the
// general client reads what the fast path wrote and the other way round.
func TestOneKeyMatchesTheGeneralPath(t *testing.T) {
	_, units, kd, cl := kvPair(t)
	ctx := context.Background()
	dense, err := engine.DenseOf([]float32{1, 2, 3}, 3)
	require.NoError(t, err)
	b := engine.MustBatch(
		engine.Field{Name: "b", Col: engine.BytesOf([][]byte{[]byte("hello")})},
		engine.Field{Name: "d", Col: dense},
		engine.Field{Name: "r", Col: engine.RaggedOf([][]int64{{7, 8}})},
		engine.Field{Name: "e", Col: engine.BytesOf([][]byte{{}})},
	)
	fields := []string{"b", "d", "e", "r"}
	took := map[string]int64{}
	for _, writer := range []string{"fast", "general"} {
		t.Run("written by "+writer, func(t *testing.T) {
			before := used(units)
			defer func() { took[writer] = used(units) - before }()
			key := "k-" + writer
			var out engine.KeysCommitted
			if writer == "fast" {
				var ok bool
				out, ok, err = kd.putOne(ctx, "p", []string{key}, b, []engine.Tags{{"s": 1}})
				require.True(t, ok, "the fast path takes a put of one key")
			} else {
				out, err = cl.PutKeys(ctx, "p", []string{key}, b, []engine.Tags{{"s": 1}})
			}
			require.NoError(t, err)
			assert.Equal(t, engine.Tags{"s": 1}, out.Tags[0])
			assert.ElementsMatch(t, fields, out.Fields)

			fast, ok, err := kd.one.Get(ctx, "p", key, fields, 1<<20)
			require.NoError(t, err)
			require.True(t, ok, "the fast path reads a key whose fields are all here")
			defer fast.Release()
			meta, err := cl.MetaByKeys(ctx, "p", []string{key}, fields, false)
			require.NoError(t, err)
			general, err := cl.Get(ctx, meta)
			require.NoError(t, err)
			for _, f := range fields {
				assert.True(t, general.Col(f).Equal(fast.Col(f)), "field %s: fast %v, general %v", f, fast.Col(f), general.Col(f))
				// One field alone (KV_GET_VALUE): the same bytes and schema.
				val, kc, release, ok, err := kd.one.Value(ctx, "p", key, f, 1<<20)
				require.NoError(t, err)
				require.True(t, ok, "field %s", f)
				assert.Equal(t, fast.Col(f).Data(), val, "field %s", f)
				assert.Equal(t, fast.Col(f).DType(), kc.DType, "field %s", f)
				assert.Equal(t, fast.Col(f).Kind(), kc.Kind, "field %s", f)
				if kc.Kind == engine.Dense {
					assert.Equal(t, fast.Col(f).Shape(), kc.Shape, "field %s", f)
				}
				release()
			}
			assert.Equal(t, general.Names(), fast.Names())
		})
	}
	assert.Equal(t, took["general"], took["fast"], "the same room taken")
}

// TestOneKeyFallsBack: what the fast paths leave to the general one, and
// a get whose cell was freed under it.
func TestOneKeyFallsBack(t *testing.T) {
	ctrl, units, kd, _ := kvPair(t)
	ctx := context.Background()
	one := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x")})})
	two := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x"), []byte("y")})})

	for name, put := range map[string]func() (engine.KeysCommitted, bool, error){
		"two keys": func() (engine.KeysCommitted, bool, error) { return kd.putOne(ctx, "p", []string{"a", "b"}, two, nil) },
		"tags only": func() (engine.KeysCommitted, bool, error) {
			return kd.putOne(ctx, "p", []string{"a"}, nil, []engine.Tags{{"x": 1}})
		},
		"bad key":       func() (engine.KeysCommitted, bool, error) { return kd.putOne(ctx, "p", []string{"\xff"}, one, nil) },
		"bad partition": func() (engine.KeysCommitted, bool, error) { return kd.putOne(ctx, "", []string{"a"}, one, nil) },
		"too large a unit": func() (engine.KeysCommitted, bool, error) {
			return kd.putOne(ctx, "p", []string{"a"}, big(t, 2<<20), nil)
		},
	} {
		_, ok, err := put()
		assert.False(t, ok, "%s: left to the client", name)
		assert.NoError(t, err, name)
	}

	// A dtype the partition holds otherwise: refused, nothing kept.
	_, ok, err := kd.putOne(ctx, "p", []string{"a"}, one, nil)
	require.True(t, ok)
	require.NoError(t, err)
	before := used(units)
	dense, _ := engine.DenseOf([]int64{1}, 1)
	_, ok, err = kd.putOne(ctx, "p", []string{"a"}, engine.MustBatch(engine.Field{Name: "v", Col: dense}), nil)
	assert.True(t, ok)
	assert.ErrorIs(t, err, engine.ErrDTypeMismatch)
	assert.Equal(t, before, used(units), "the refused put's extent is freed")

	// Draining units take no put; with only draining units the client
	// decides.
	_, err = ctrl.DrainUnit(units[0].ID(), true)
	require.NoError(t, err)
	for i := range 8 {
		assert.Equal(t, units[1], kd.one.UnitFor(string(rune('a'+i))), "unit 1 drains")
	}
	assert.Nil(t, NewOneKey(ctrl, units[0]).UnitFor("a"))

	// Gets: absent keys and fields, not this process's bytes, too many.
	for name, get := range map[string][]string{"absent key": {"nope", "v"}, "absent field": {"a", "w"}} {
		_, ok, err := kd.one.Get(ctx, "p", get[0], get[1:], 1<<20)
		assert.False(t, ok, name)
		assert.NoError(t, err, name)
		_, _, _, ok, err = kd.one.Value(ctx, "p", get[0], get[1], 1<<20)
		assert.False(t, ok, name)
		assert.NoError(t, err, name)
	}
	_, ok, err = kd.one.Get(ctx, "p", "a", []string{"v"}, 0)
	assert.False(t, ok, "more than maxBytes")
	assert.NoError(t, err)
	_, _, _, ok, err = kd.one.Value(ctx, "p", "a", "v", 0)
	assert.False(t, ok, "more than maxBytes")
	assert.NoError(t, err)

	// The cell freed between lookup and lease: read again.
	loc, found := ctrl.KeyCell("p", "a", "v")
	require.True(t, found)
	for _, u := range units {
		if u.ID() == loc.Unit {
			_, err := u.FreeRanges([]engine.RemoteAddr{loc.Addr})
			require.NoError(t, err)
		}
	}
	_, ok, err = kd.one.Get(ctx, "p", "a", []string{"v"}, 1<<20)
	assert.True(t, ok)
	assert.True(t, client.CellsGone(err), "a freed cell is read again: %v", err)
	_, _, release, ok, err := kd.one.Value(ctx, "p", "a", "v", 1<<20)
	assert.True(t, ok)
	assert.Nil(t, release)
	assert.True(t, client.CellsGone(err), "a freed cell is read again: %v", err)
}

func big(t *testing.T, n int) *engine.Batch {
	t.Helper()
	return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, n)})})
}

// TestOneKeyCommitMovesOffADrainingUnit: a unit marked draining between
// UnitFor and the commit has the commit refused by the controller; OneKey
// writes the bytes to the unit the key picks now and commits there, and
// the draining unit keeps nothing. With no room elsewhere the commit fails
// as the controller refused it, and nothing is kept.
func TestOneKeyCommitMovesOffADrainingUnit(t *testing.T) {
	ctrl, units, kd, cl := kvPair(t)
	ctx := context.Background()
	fields := func() []engine.CommitField {
		return []engine.CommitField{{Name: "b", DType: engine.Bytes, Kind: engine.Opaque}, {Name: "e", DType: engine.Bytes, Kind: engine.Opaque}}
	}
	reserve := func(key string) (*storage.Unit, *storage.Reservation) {
		u := kd.one.UnitFor(key)
		require.NotNil(t, u)
		r, err := u.Reserve(ctx, []int64{5, 0})
		require.NoError(t, err)
		copy(r.Buf(0), "hello")
		return u, r
	}

	u, r := reserve("k")
	_, err := ctrl.DrainUnit(u.ID(), true)
	require.NoError(t, err)
	out, err := kd.one.Commit(ctx, u, r, "p", "k", fields(), engine.Tags{"s": int64(1)})
	require.NoError(t, err, "a commit refused for the drain is made on another unit")
	assert.Equal(t, []string{"b", "e"}, out.Fields)
	assert.Equal(t, engine.Tags{"s": int64(1)}, out.Tags[0])
	cells, found := ctrl.KeyCells("p", "k", []string{"b"}, nil)
	require.True(t, found)
	require.Len(t, cells, 1)
	assert.NotEqual(t, u.ID(), cells[0].Loc.Unit, "the cell lies on the unit not draining")
	assert.Zero(t, used([]*storage.Unit{u}), "the draining unit keeps nothing")
	meta, err := cl.MetaByKeys(ctx, "p", []string{"k"}, []string{"b", "e"}, false)
	require.NoError(t, err)
	b, err := cl.Get(ctx, meta)
	require.NoError(t, err)
	assert.Equal(t, []byte("hello"), b.Col("b").RowBytes(0))
	assert.Empty(t, b.Col("e").RowBytes(0))
	b.Release()

	// The other unit full: nowhere to go at once. The commit fails as
	// the controller refused it, and no unit keeps the bytes.
	_, err = ctrl.DrainUnit(u.ID(), false)
	require.NoError(t, err)
	u, r = reserve("k2")
	for _, filler := range fill(otherUnit(units, u)) {
		defer filler.Abort()
	}
	_, err = ctrl.DrainUnit(u.ID(), true)
	require.NoError(t, err)
	_, err = kd.one.Commit(ctx, u, r, "p", "k2", fields(), nil)
	require.ErrorIs(t, err, engine.ErrLost)
	dr, ok := errors.AsType[*DrainRefused](err)
	require.True(t, ok, "the refusal hands the bytes back: %v", err)
	assert.Equal(t, [][]byte{[]byte("hello"), {}}, dr.Bytes)
	_, found = ctrl.KeyCells("p", "k2", []string{"b"}, nil)
	assert.False(t, found, "a refused commit changes nothing")
	assert.Zero(t, used([]*storage.Unit{u}), "and keeps no bytes")
}

// otherUnit is the unit of two that is not u.
func otherUnit(units []*storage.Unit, u *storage.Unit) *storage.Unit {
	if units[0] == u {
		return units[1]
	}
	return units[0]
}

// fill reserves every byte u has free, in reservations to abort.
func fill(u *storage.Unit) []*storage.Reservation {
	var out []*storage.Reservation
	for _, size := range []int64{64 << 10, 4 << 10, 64, 1} {
		for {
			r, err := u.Reserve(engine.WithoutWait(context.Background()), []int64{size})
			if err != nil {
				break
			}
			out = append(out, r)
		}
	}
	return out
}

// A KV_SET whose unit starts draining while its bytes are read, with no
// other unit having room at once, goes the general way: it waits for
// room (as its context allows) and lands on the unit not draining. It
// used to fail as lost. One that may not wait is refused as a full
// cluster's put is, and leaves nothing anywhere.
func TestSetValueRefusedForADrainGoesTheGeneralWay(t *testing.T) {
	ctrl, units, kd, cl := kvPair(t)
	ctx := context.Background()
	u := kd.one.UnitFor("k")
	other := otherUnit(units, u)
	drainAndFill := func(release time.Duration) controller.ReadFunc {
		return func(dst []byte) error {
			copy(dst, "hello")
			fillers := fill(other)
			if release > 0 {
				time.AfterFunc(release, func() {
					for _, f := range fillers {
						f.Abort()
					}
				})
			} else {
				t.Cleanup(func() {
					for _, f := range fillers {
						f.Abort()
					}
				})
			}
			_, err := ctrl.DrainUnit(u.ID(), true)
			return err
		}
	}

	_, err := kd.SetValue(ctx, "p", "k", "v", 5, drainAndFill(50*time.Millisecond))
	require.NoError(t, err)
	cells, found := ctrl.KeyCells("p", "k", []string{"v"}, nil)
	require.True(t, found)
	assert.Equal(t, other.ID(), cells[0].Loc.Unit, "the cell lies on the unit not draining")
	assert.Zero(t, used([]*storage.Unit{u}), "the draining unit keeps nothing")
	meta, err := cl.MetaByKeys(ctx, "p", []string{"k"}, []string{"v"}, false)
	require.NoError(t, err)
	b, err := cl.Get(ctx, meta)
	require.NoError(t, err)
	assert.Equal(t, []byte("hello"), b.Col("v").RowBytes(0))
	b.Release()

	_, err = ctrl.DrainUnit(u.ID(), false)
	require.NoError(t, err)
	require.Equal(t, u, kd.one.UnitFor("k2"), "k2 picks the same unit as k")
	_, err = kd.SetValue(engine.WithoutWait(ctx), "p", "k2", "v", 5, drainAndFill(0))
	require.Error(t, err)
	assert.NotErrorIs(t, err, engine.ErrLost)
	t.Log(err)
	_, found = ctrl.KeyCells("p", "k2", []string{"v"}, nil)
	assert.False(t, found)
	assert.Zero(t, used([]*storage.Unit{u}), "the draining unit keeps nothing")
}

// KVData's gets carry the rows' own tag maps (the server encodes them at
// once: rows put with one map come back as one map), where the general
// client's are copies of their own that its caller may change.
func TestKVDataSharesTags(t *testing.T) {
	ctrl, _, kd, cl := kvPair(t)
	ctx := context.Background()
	keys := []string{"a", "b", "c"}
	one := engine.Tags{"status": "generated"}
	vals := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x"), []byte("y"), []byte("z")})})
	_, err := cl.PutKeys(ctx, "p", keys, vals, []engine.Tags{one, one, one})
	require.NoError(t, err)

	meta, _, err := kd.GetKeys(ctx, "p", keys, []string{"v"}, 0)
	require.NoError(t, err)
	require.Len(t, meta.Tags, 3)
	assert.True(t, meta.Tags[0].Same(meta.Tags[2]), "one map, the rows'")

	own, err := cl.MetaByKeys(ctx, "p", keys, []string{"v"}, false)
	require.NoError(t, err)
	assert.False(t, own.Tags[0].Same(own.Tags[1]), "copies")
	own.Tags[0]["status"] = "changed"
	again, err := ctrl.ResolveKeys("p", keys, nil, false)
	require.NoError(t, err)
	assert.Equal(t, []engine.Tags{one, one, one}, again.Tags)
}

// A KV_SET whose payload arrives slower than the unit's reservation
// timeout fails, and the rest of its bytes never land in memory the unit
// handed to another put meanwhile: its reservation is held (see
// storage.Unit.ReserveHeld) until SetValue ends it. It used to be
// aborted by the unit's reaper with the read still going, so another put
// got the same bytes and the slow payload overwrote that put's cell.
func TestSetValueSlowerThanTheReserveTimeoutSparesOtherPuts(t *testing.T) {
	ctrl, err := controller.New(controller.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	scfg := storage.DefaultConfig()
	scfg.Capacity, scfg.SegmentSize = 1<<20, 1<<20
	scfg.ReserveTimeout = 50 * time.Millisecond
	u, err := storage.NewUnit(0, scfg)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	id, err := ctrl.Units().Register(engine.UnitInfo{Incarnation: u.Incarnation(), Host: "h", Name: "u", Capacity: scfg.Capacity}, true)
	require.NoError(t, err)
	u.SetID(id)
	kdi, err := KVData(ctrl, u)
	require.NoError(t, err)
	kd := kdi.(kvData)
	ctx := context.Background()

	const n = 100
	victim := bytes.Repeat([]byte("V"), n)
	_, err = kd.SetValue(ctx, "p", "slow", "f", n, controller.ReadFunc(func(dst []byte) error {
		copy(dst[:n/2], bytes.Repeat([]byte("A"), n/2))
		// The client stalls until the unit's reaper has timed the
		// reservation out; another put comes meanwhile.
		require.Eventually(t, func() bool { return u.Stats().OpenReservations == 0 }, 10*time.Second, time.Millisecond)
		_, err := kd.SetValue(ctx, "p", "victim", "f", n, controller.ReadFunc(func(d []byte) error {
			copy(d, victim)
			return nil
		}))
		require.NoError(t, err)
		copy(dst[n/2:], bytes.Repeat([]byte("X"), n/2)) // the rest of the slow payload
		return nil
	}))
	require.ErrorIs(t, err, engine.ErrInvalid, "the slow put outlived its reservation")
	_, found := ctrl.KeyCells("p", "slow", []string{"f"}, nil)
	assert.False(t, found)

	val, _, release, ok, err := kd.GetValue(ctx, "p", "victim", "f", 1<<20)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, string(victim), string(val), "the other put's bytes")
	release()
	assert.Equal(t, 1, u.Stats().Extents, "the slow put's extent is given back")
}

// A KV_GET of unknown keys names them in a KeysError (Error.keys over the
// wire, wire/spec.md "Errors"), one key (the one-key path) or several.
func TestKVGetNamesTheUnknownKeys(t *testing.T) {
	_, _, kd, cl := kvPair(t)
	ctx := context.Background()
	vals := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("x")})})
	_, err := cl.PutKeys(ctx, "p", []string{"a"}, vals, nil)
	require.NoError(t, err)
	for _, keys := range [][]string{{"nope"}, {"a", "nope", "gone"}} {
		_, _, err := kd.GetKeys(ctx, "p", keys, []string{"v"}, 1<<20)
		ke, ok := errors.AsType[*engine.KeysError](err)
		require.True(t, ok, "%v: %v", keys, err)
		assert.Equal(t, keys[len(keys)/2:], ke.Keys)
		assert.ErrorIs(t, err, engine.ErrNotFound)
	}
}
