package client_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/tcp"
)

// churnUnit is a unit served on a unix socket and its fd socket, joined
// to the churn test's controller.
type churnUnit struct {
	u    *storage.Unit
	sock string
}

// churnCluster starts a controller and two units of 64 MiB with 4 MiB
// segments (so that they map more, and larger ones for 1 MiB rows), served over unix sockets and
// shared memory, with a short quarantine for the holds of connections
// that end without a goodbye.
func churnCluster(t *testing.T) (*controller.Controller, string, []*churnUnit) {
	t.Helper()
	ctx := t.Context()
	ctrl, err := controller.New(controller.Config{UnitTimeout: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	_, addr := serveController(t, ctrl, controller.ServerConfig{}, "unix")
	var units []*churnUnit
	for range 2 {
		cfg := storage.DefaultConfig()
		cfg.Capacity = 64 << 20
		cfg.SegmentSize = 4 << 20
		u, err := storage.NewUnit(0, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { u.Close() })
		_, err = storage.AssignID(ctx, addr, u, storage.JoinConfig{})
		require.NoError(t, err)
		cu := &churnUnit{u: u, sock: filepath.Join(t.TempDir(), "unit.sock")}
		srv := storage.NewServer(u, storage.ServerConfig{Quarantine: 100 * time.Millisecond})
		l, err := net.Listen("unix", cu.sock)
		require.NoError(t, err)
		fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: cu.sock + ".shm", Net: "unix"})
		require.NoError(t, err)
		srv.RegisterShm(fl)
		var wg sync.WaitGroup
		wg.Go(func() { srv.Serve(l) })
		wg.Go(func() { srv.ServeShm(fl) })
		t.Cleanup(func() { srv.Close(); wg.Wait() })
		mem, err := storage.Join(ctx, addr, u, storage.JoinConfig{Addrs: []string{"unix://" + cu.sock, "shm://" + cu.sock + ".shm"}})
		require.NoError(t, err)
		t.Cleanup(func() { mem.Close() })
		units = append(units, cu)
	}
	return ctrl, addr, units
}

// churnBatch makes n rows of the fields the churn writes: a tiny dense
// one, 1 KiB opaque rows, ragged rows, and, with big, 1 MiB opaque rows.
func churnBatch(t *testing.T, rng *rand.Rand, n int, big bool) *engine.Batch {
	t.Helper()
	tiny := make([]int64, n)
	kib := make([][]byte, n)
	rag := make([][]float32, n)
	var mib [][]byte
	for i := range n {
		tiny[i] = rng.Int64()
		kib[i] = make([]byte, 1024)
		rag[i] = make([]float32, rng.IntN(300))
	}
	tc, err := engine.DenseOf(tiny)
	require.NoError(t, err)
	fields := []engine.Field{{Name: "tiny", Col: tc}, {Name: "kib", Col: engine.BytesOf(kib)}, {Name: "rag", Col: engine.RaggedOf(rag)}}
	if big {
		mib = make([][]byte, n)
		for i := range mib {
			mib[i] = make([]byte, 1<<20-rng.IntN(4096))
		}
		fields = append(fields, engine.Field{Name: "mib", Col: engine.BytesOf(mib)})
	}
	return engine.MustBatch(fields...)
}

// A long RL run writes and clears a partition's worth of rows every step:
// any byte a unit does not give back fills it after hours. Seeded rounds
// of puts of mixed sizes, overwrites of one field of a key, views held and
// released (or left to a client's close), reservations aborted or left to
// a client's close, puts and gets cut off by their context, and clears of
// rows, keys and whole partitions, a unit drained and put back, over
// shared memory and unix sockets; after each round everything is cleared
// and each unit's own counters, its UNIT_STATS message and the
// controller's view of it go back to nothing used. The seed is logged;
// TQ_CHURN_SEED replays one (timing still varies). A round's 1 MiB rows
// stay within one unit's capacity: a client that has just put a unit back
// in service places on the other alone for up to a second, and
// fragmentation across segments can then refuse a put (see Unit.Reserve).
func TestChurnGivesEveryByteBack(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TQ_CHURN_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := t.Context()
	ctrl, addr, units := churnCluster(t)
	start := make([]storage.Stats, len(units))
	for i, cu := range units {
		start[i] = cu.u.Stats()
	}
	connect := func(transport string) *client.Client {
		c, err := client.Connect(ctx, addr, client.ConnectConfig{Transport: transport, WaitForUnits: true})
		require.NoError(t, err)
		return c
	}
	main := connect(client.TransportShm)
	defer main.Close()
	kv := kvapi.New(main)
	rounds := 6
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		var others []*client.Client
		var views []*client.View
		parts := []string{fmt.Sprintf("r%d-a", round), fmt.Sprintf("r%d-b", round)}
		keys := map[string][]string{}
		drained := false
		bigRows := 0 // 1 MiB rows put this round: kept within one unit's capacity
		big := func(n int) bool {
			if bigRows+n > 24 || rng.IntN(3) != 0 {
				return false
			}
			bigRows += n
			return true
		}
		for step := range 24 {
			part := parts[rng.IntN(len(parts))]
			switch op := rng.IntN(10); op {
			case 0, 1: // a KV put of mixed sizes, some keys put again
				n := 1 + rng.IntN(8)
				ks := make([]string, n)
				for i := range ks {
					if old := keys[part]; len(old) > 0 && rng.IntN(3) == 0 {
						ks[i] = old[rng.IntN(len(old))]
					} else {
						ks[i] = fmt.Sprintf("k%d-%d-%d", round, step, i)
						keys[part] = append(keys[part], ks[i])
					}
				}
				ks = slices.Compact(slices.Sorted(slices.Values(ks))) // a key once a put
				_, err := kv.BatchPut(ctx, part, ks, churnBatch(t, rng, len(ks), big(len(ks))), nil)
				if err != nil {
					for _, cu := range units {
						t.Logf("unit %d: %+v", cu.u.ID(), cu.u.Stats())
					}
					for _, p := range parts {
						st, _ := main.Stats(ctx, p)
						t.Logf("%s: %+v", p, st)
					}
					t.Logf("views held %d, other clients %d", len(views), len(others))
				}
				require.NoError(t, err, "round %d step %d: put", round, step)
			case 2: // one field of a key overwritten
				if len(keys[part]) == 0 {
					continue
				}
				k := keys[part][rng.IntN(len(keys[part]))]
				col, err := engine.DenseOf([]int64{int64(step)})
				require.NoError(t, err)
				_, err = kv.BatchPut(ctx, part, []string{k}, engine.MustBatch(engine.Field{Name: "tiny", Col: col}), nil)
				require.NoError(t, err, "round %d step %d: overwrite %s", round, step, k)
			case 3: // a view, released now, later, or left to a client's close
				if len(keys[part]) == 0 {
					continue
				}
				c := main
				if rng.IntN(2) == 0 {
					c = connect([]string{client.TransportShm, "tcp"}[rng.IntN(2)])
					others = append(others, c)
				}
				v, err := kvapi.New(c).BatchGetView(ctx, part, keys[part][:1+rng.IntN(len(keys[part]))])
				require.NoError(t, err, "round %d step %d: view", round, step)
				switch {
				case rng.IntN(3) == 0:
					v.Release()
				case c == main:
					views = append(views, v)
				} // else: the client's close ends it
			case 4: // a reservation aborted, or left to a client's close
				c := connect(client.TransportShm)
				others = append(others, c)
				b, err := kvapi.New(c).ReservePut(ctx, part, []string{fmt.Sprintf("res%d-%d", round, step)},
					client.FieldSpec{Name: "kib", DType: engine.Bytes, RowBytes: []int{1 + rng.IntN(1<<20)}})
				require.NoError(t, err, "round %d step %d: reserve", round, step)
				if rng.IntN(2) == 0 {
					require.NoError(t, b.Abort(ctx))
				}
			case 5: // a put or a get cut off by its context
				c := connect([]string{client.TransportShm, "tcp"}[rng.IntN(2)])
				others = append(others, c)
				cctx, cancel := context.WithCancel(ctx)
				delay := time.Duration(rng.IntN(2000)) * time.Microsecond
				go func() {
					time.Sleep(delay)
					cancel()
				}()
				if len(keys[part]) > 0 && rng.IntN(2) == 0 {
					if v, err := kvapi.New(c).BatchGetView(cctx, part, keys[part]); err == nil && rng.IntN(2) == 0 {
						v.Release()
					}
				} else {
					ks := []string{fmt.Sprintf("cut%d-%d", round, step)}
					if _, err := kvapi.New(c).BatchPut(cctx, part, ks, churnBatch(t, rng, 1, big(1)), nil); err == nil {
						keys[part] = append(keys[part], ks[0])
					}
				}
				cancel()
			case 6: // some keys cleared
				if len(keys[part]) == 0 {
					continue
				}
				n := 1 + rng.IntN(len(keys[part]))
				require.NoError(t, kv.Clear(ctx, part, keys[part][:n]))
				keys[part] = keys[part][n:]
			case 7: // rows cleared by their meta
				if len(keys[part]) == 0 {
					continue
				}
				m, err := main.MetaByKeys(ctx, part, keys[part][:1], []string{"tiny"}, false)
				require.NoError(t, err)
				require.NoError(t, main.Clear(ctx, m))
				keys[part] = keys[part][1:]
			case 8: // a whole partition cleared
				require.NoError(t, main.ClearPartition(ctx, part))
				keys[part] = nil
			case 9: // a unit drained (its cells moved to the other) and put back in service
				if drained {
					continue
				}
				drained = true
				id := units[rng.IntN(len(units))].u.ID()
				_, err := main.Drain(ctx, id, client.DrainConfig{Settle: time.Millisecond})
				require.NoError(t, err, "round %d step %d: drain unit %d", round, step, id)
				_, err = main.Meta().(*client.RemoteMeta).DrainUnit(ctx, id, false)
				require.NoError(t, err)
			}
		}
		for _, v := range views {
			v.Release()
		}
		for _, c := range others {
			c.Close()
		}
		for _, p := range parts {
			require.NoError(t, main.ClearPartition(ctx, p))
		}
		for i, cu := range units {
			requireSettled(t, ctrl, cu, start[i], round)
		}
	}
}

// requireSettled waits until the unit's counters, its UNIT_STATS and the
// controller's view of it say nothing is used, reserved or leased.
func requireSettled(t *testing.T, ctrl *controller.Controller, cu *churnUnit, start storage.Stats, round int) {
	t.Helper()
	id := cu.u.ID()
	var last storage.Stats
	settled := func() bool {
		last = cu.u.Stats()
		return last.Used == start.Used && last.Reserved == start.Reserved && last.Extents == start.Extents &&
			last.Leases == start.Leases && last.OpenReservations == start.OpenReservations &&
			last.Quarantined == 0 && last.QuarantinedSessions == 0
	}
	deadline := time.Now().Add(20 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	require.True(t, settled(), "round %d: unit %d not back to its start: %+v, started %+v", round, id, last, start)

	tr := tcp.New(tcp.Config{})
	defer tr.Close()
	conn, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: id, Addr: "unix://" + cu.sock})
	require.NoError(t, err)
	st, err := conn.Stats(t.Context())
	require.NoError(t, err)
	require.Zero(t, st.GetUsed(), "round %d: unit %d's UNIT_STATS", round, id)
	require.Zero(t, st.GetReserved(), "round %d: unit %d's UNIT_STATS", round, id)
	require.Zero(t, st.GetExtents(), "round %d: unit %d's UNIT_STATS", round, id)
	require.Zero(t, st.GetLeases(), "round %d: unit %d's UNIT_STATS", round, id)

	var info engine.UnitInfo
	for time.Now().Before(deadline) {
		info, _ = ctrl.Units().Unit(id)
		if info.Used == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Zero(t, info.Used, "round %d: the controller's view of unit %d", round, id)
}
