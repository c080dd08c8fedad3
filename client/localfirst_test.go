package client_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// hostUnit is a real unit that says it runs on host: units of another
// host, for local-first placement, in one process.
type hostUnit struct {
	client.DataUnit
	host string
}

func (h hostUnit) Host() string { return h.host }

func (h hostUnit) Room() (capacity, used int64) {
	return h.DataUnit.(interface{ Room() (int64, int64) }).Room()
}

// Local-first, as the README's Placement section puts it: a put goes to a
// unit on the client's host, the first of several chosen by the put's
// lowest row index; one that does not fit there spills to the other
// local unit, then to the other host's, each taking what it has room
// for (12 MiB into two local 8 MiB units lands 8 + 4; 20 MiB lands
// 8 + 8 + 4).
func TestLocalFirstPrefersThisHostThenSpills(t *testing.T) {
	ctx := t.Context()
	const remote = engine.UnitID(1) // units 2 and 3 are on this host
	_, c := unitCluster(t, 3, 8<<20, client.DefaultConfig(), func(i int, u client.DataUnit) client.DataUnit {
		if u.ID() == remote {
			return hostUnit{u, "another-host"}
		}
		return hostUnit{u, client.HostID()}
	})

	// Small puts: each on a local unit, the two taking turns by the
	// put's lowest row index, never on the other host's.
	var firsts []engine.UnitID
	var small []*engine.BatchMeta
	for range 4 {
		m, err := c.PutNew(ctx, "small", opaque([]int{64}))
		require.NoError(t, err)
		on := cellsPerUnit(m, "v")
		require.Len(t, on, 1, "a one-row put: %v", on)
		for u := range on {
			firsts = append(firsts, u)
		}
		small = append(small, m)
	}
	assert.NotContains(t, firsts, remote, "units of the small puts, rows 0..3")
	assert.NotEqual(t, firsts[0], firsts[1], "rows 0 and 1 begin on different local units: %v", firsts)
	assert.Equal(t, firsts[0], firsts[2], "rows 0 and 2 begin on the same local unit: %v", firsts)
	for _, m := range small {
		require.NoError(t, c.Clear(ctx, m))
	}

	for _, tc := range []struct {
		rows int            // of 128 KiB
		want map[bool][]int // rows per unit, sorted, local (true) and the other host's
	}{
		{96, map[bool][]int{true: {32, 64}}},
		{160, map[bool][]int{true: {64, 64}, false: {32}}},
	} {
		m, err := c.PutNew(ctx, "big", opaque(repeat(tc.rows, 128<<10)))
		require.NoError(t, err, "%d MiB into 24 MiB", tc.rows/8)
		got := map[bool][]int{}
		for u, n := range cellsPerUnit(m, "v") {
			got[u != remote] = append(got[u != remote], n)
		}
		for _, ns := range got {
			if len(ns) == 2 && ns[0] > ns[1] {
				ns[0], ns[1] = ns[1], ns[0]
			}
		}
		assert.Equal(t, tc.want, got, "%d MiB: rows per unit, local (true) and the other host's (false)", tc.rows/8)
		require.NoError(t, c.Clear(ctx, m))
	}
}

// A KV put chooses its local unit by its first key's hash, as the
// README's Placement section says: one-key puts of different keys spread
// over the host's units, and a key put again goes where it went before,
// whatever else was put in between.
func TestLocalFirstChoosesByTheFirstKey(t *testing.T) {
	ctx := t.Context()
	_, c := unitCluster(t, 2, 8<<20, client.DefaultConfig(), func(i int, u client.DataUnit) client.DataUnit {
		return hostUnit{u, client.HostID()}
	})
	kv := kvapi.New(c)
	keys := keyRange("k", 16)
	unitOf := func(part, key string) engine.UnitID {
		t.Helper()
		_, err := kv.BatchPut(ctx, part, []string{key}, xBatch(t, 1), nil)
		require.NoError(t, err)
		on := unitsOf(t, c, part, []string{key})
		require.Len(t, on, 1)
		return on[0]
	}
	first := map[string]engine.UnitID{}
	seen := map[engine.UnitID]bool{}
	for _, k := range keys {
		first[k] = unitOf("a", k)
		seen[first[k]] = true
	}
	assert.Len(t, seen, 2, "units of 16 one-key puts")
	for i := len(keys) - 1; i >= 0; i-- {
		assert.Equal(t, first[keys[i]], unitOf("b", keys[i]), "key %s put again", keys[i])
	}
}
