package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// patterned is a batch of one opaque field "v": n rows of size bytes,
// row i a pattern of i.
func patterned(n, size int) *engine.Batch {
	rows := make([][]byte, n)
	for i := range rows {
		rows[i] = make([]byte, size)
		for j := range rows[i] {
			rows[i][j] = byte(i*31 + j)
		}
	}
	return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf(rows)})
}

// Spill placement with real processes: a controller and two `tq serve
// --role unit` processes of 8 MiB each on this host, over TCP (WRITE
// with no_wait) and shared memory (RESERVE with no_wait).
//
//   - A 12 MiB local-first put succeeds, spans both units and reads back
//     bit-exact (local-first used to put it whole on one unit and fail).
//   - With the first choice filled to the last byte, a put goes to the
//     other unit at once: it used to wait there for room (5 s, the unit's
//     reserve wait) and fail with ErrCapacity.
//   - So does a KV put.
func TestServeSpillsAcrossUnits(t *testing.T) {
	bin := tqBinary(t)
	for _, tr := range []string{client.TransportTCP, client.TransportShm} {
		t.Run("transport="+tr, func(t *testing.T) {
			dir := t.TempDir()
			sockets := ""
			if tr == client.TransportShm {
				sockets = dir
			}
			ctrl := startServe(t, nil, bin, "--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", dir, "--heartbeat", "100ms")
			addr := ctrl.addr("tcp")
			for range 2 {
				startServeIn(t, ctrl.dataDir, nil, bin, "--role", "unit", "--controller", addr, "--socket-dir", sockets,
					"--capacity", "8MiB")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var c *client.Client
			require.Eventually(t, func() bool {
				var err error
				if c != nil {
					c.Close()
				}
				c, err = client.Connect(ctx, addr, client.ConnectConfig{WaitForUnits: true, Transport: tr, Token: ctrl.token(t)})
				return err == nil && len(c.Units()) == 2
			}, 20*time.Second, 50*time.Millisecond, "two units registered")
			defer c.Close()
			units := c.Units()

			want := patterned(96, 128<<10) // 12 MiB
			m, err := c.PutNew(ctx, "p", want)
			require.NoError(t, err, "a 12 MiB put into two 8 MiB units")
			on := map[engine.UnitID]int{}
			for _, l := range m.Cells["v"] {
				on[l.Unit]++
			}
			assert.Len(t, on, 2, "rows per unit: %v", on)
			got, err := c.GetCopy(ctx, m)
			require.NoError(t, err)
			require.Equal(t, want.Col("v").Data(), got.Col("v").Data(), "bytes read back")
			require.NoError(t, c.Clear(ctx, m))
			// The units free the cleared cells when the controller's frees
			// reach them: wait, or the unit filled below gets room back
			// under the puts that expect it full. Ask the units: the
			// controller's numbers are those of the last heartbeat, which
			// may be from before the put.
			waitFreed(t, ctx, c, ctrl.token(t), "the 12 MiB put's cells")

			// Fill the first choice of the next put (its lowest index is
			// even: the first local unit) to the last 4 KiB.
			full := units[0]
			for _, size := range []int{1 << 20, 64 << 10, 4 << 10} {
				for {
					if _, err := full.Write(engine.WithoutWait(ctx), [][][]byte{{make([]byte, size)}}); err != nil {
						require.ErrorIs(t, err, engine.ErrCapacity, "filling unit %d", full.ID())
						break
					}
				}
			}
			for i := range 3 {
				m, err := c.PutNew(ctx, "q", patterned(4, 256<<10))
				require.NoError(t, err, "put %d with unit %d full", i, full.ID())
				require.Zero(t, m.Indexes[0]%2, "the put's first choice is the full unit")
				for _, l := range m.Cells["v"] {
					require.Equal(t, units[1].ID(), l.Unit, "put %d: a row on the full unit", i)
				}
				require.NoError(t, c.Clear(ctx, m))
			}
			// The 6 MiB below needs the other unit's 8 MiB back.
			waitFreed(t, ctx, c, ctrl.token(t), "the puts' cells", units[1].ID())

			// A KV put goes there too, whichever unit its first key picks.
			kv := kvapi.New(c)
			keys := helperKeys(0, 24)
			vals := patterned(24, 256<<10) // 6 MiB
			_, err = kv.BatchPut(ctx, "kv", keys, vals, nil)
			require.NoError(t, err, "a 6 MiB KV put with unit %d full", full.ID())
			km, err := c.MetaByKeys(ctx, "kv", keys, []string{"v"}, false)
			require.NoError(t, err)
			for _, l := range km.Cells["v"] {
				require.Equal(t, units[1].ID(), l.Unit, "a KV row on the full unit")
			}
			back, err := kv.BatchGetCopy(ctx, "kv", keys, "v")
			require.NoError(t, err)
			require.Equal(t, vals.Col("v").Data(), back.Col("v").Data())
		})
	}
}

// waitFreed waits until the units of ids (all of the cluster's, if none)
// hold no committed bytes, by their own account.
func waitFreed(t *testing.T, ctx context.Context, c *client.Client, token, what string, ids ...engine.UnitID) {
	t.Helper()
	lister := c.Meta().(interface {
		Units(context.Context) ([]engine.UnitInfo, error)
	})
	require.Eventually(t, func() bool {
		infos, err := lister.Units(ctx)
		if err != nil {
			return false
		}
		if len(ids) > 0 {
			infos = slices.DeleteFunc(infos, func(u engine.UnitInfo) bool { return !slices.Contains(ids, u.ID) })
		}
		if len(infos) == 0 || len(freshUnitStats(ctx, infos, token)) != len(infos) {
			return false
		}
		for _, u := range infos {
			if u.Used != 0 {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "%s freed on units %v", what, ids)
}
