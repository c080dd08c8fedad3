//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

func TestReadDepthWith(t *testing.T) {
	cases := []struct {
		name           string
		own, peer, got ReadDepth
	}{
		{"same", ReadDepth{16, 16}, ReadDepth{16, 16}, ReadDepth{16, 16}},
		{"peer serves fewer", ReadDepth{8, 4}, ReadDepth{16, 2}, ReadDepth{2, 4}},
		{"peer initiates fewer", ReadDepth{16, 16}, ReadDepth{1, 16}, ReadDepth{16, 1}},
		{"peer did not say", ReadDepth{8, 4}, ReadDepth{}, ReadDepth{8, 4}},
		{"peer said half", ReadDepth{8, 4}, ReadDepth{Init: 2}, ReadDepth{8, 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.got, tc.own.With(tc.peer))
		})
	}
}

// Queue pairs between devices with different RDMA READ limits agree on
// them: READs one side may have in flight are the lower of its
// max_qp_init_rd_atom and the other's max_qp_rd_atom, and the other makes
// room for as many. A client that took its own device's limit alone would
// send more READs than the unit serves, and its reads would fail.
func TestReadDepthNegotiated(t *testing.T) {
	client, unit := ReadDepth{Init: 8, Resp: 4}, ReadDepth{Init: 16, Resp: 2}
	require.NoError(t, SetEmulatedReadDepth("emu2", client))
	require.NoError(t, SetEmulatedReadDepth("emu3", unit))
	t.Cleanup(func() {
		assert.NoError(t, SetEmulatedReadDepth("emu2", ReadDepth{}))
		assert.NoError(t, SetEmulatedReadDepth("emu3", ReadDepth{}))
	})
	tgt, _, addr := inProcUnitOn(t, "emu3")
	require.Equal(t, unit, tgt.Device().ReadDepth())
	tr := newTransport(t, Config{Device: "emu2", QPs: 2})
	dev, err := tr.Device()
	require.NoError(t, err)
	require.Equal(t, client, dev.ReadDepth())
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)

	payload := bytes.Repeat([]byte("depth"), 20000)
	addrs, err := c.Write(t.Context(), [][][]byte{{payload}})
	require.NoError(t, err)
	got := make([]byte, len(payload))
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{got}))
	require.Equal(t, payload, got)

	c.mu.RLock()
	set := c.set
	c.mu.RUnlock()
	require.NotNil(t, set)
	for i, q := range set.qps {
		d, err := q.ReadDepth()
		require.NoError(t, err)
		assert.Equal(t, ReadDepth{Init: 2, Resp: 4}, d, "client queue pair %d", i)
	}
	tgt.mu.Lock()
	defer tgt.mu.Unlock()
	require.Len(t, tgt.sets, 1)
	for s := range tgt.sets {
		for i, q := range s.qps {
			d, err := q.ReadDepth()
			require.NoError(t, err)
			assert.Equal(t, ReadDepth{Init: 4, Resp: 2}, d, "unit queue pair %d", i)
		}
	}
}
