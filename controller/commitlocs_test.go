package controller

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestCommitRefusesUnitIDsPastLostUnit sends COMMIT_KEYS and COMMIT by
// hand (a hostile or buggy client: the Go client only names units it
// listed) whose cells name unit 2^31+1. Unit ids are below
// engine.LostUnit, and a cell keeps its unit in 31 bits: the commit was
// taken, its cells read back as unit 1's, and the unit's draining mark
// (and its fences, checked under the id as sent) did not stop it. It is
// refused, naming the field and the unit, and changes nothing.
func TestCommitRefusesUnitIDsPastLostUnit(t *testing.T) {
	c := newController(t, DefaultConfig())
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	var reg wirepb.RegisterReply
	require.NoError(t, do(conn, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 5}, &reg))
	require.Equal(t, uint32(1), reg.UnitId)
	require.NoError(t, do(conn, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 6}, &reg)) // unit 2: unit 1's cells have somewhere to go
	_, err := c.Units().SetDraining(1, true)
	require.NoError(t, err)

	const alias = 1<<31 | 1
	field := func(locs *wirepb.Addrs) []*wirepb.CommitField {
		return []*wirepb.CommitField{{Name: "v", Dtype: "int64", Kind: "dense", Shape: &wirepb.Shape{}, HasLocs: true, Locs: locs}}
	}
	one := &wirepb.Addrs{Unit: []uint32{alias}, Segment: []uint32{1}, Gen: []uint32{1}, Offset: []uint64{0}, Len: []uint64{8}}
	run := &wirepb.Addrs{RunCount: []uint32{1}, RunUnit: []uint32{alias}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{8}}

	for name, locs := range map[string]*wirepb.Addrs{"cell by cell": one, "run": run} {
		t.Run(name, func(t *testing.T) {
			err := do(conn, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: []string{"k"}, Fields: field(locs)}, &wirepb.CommitKeysReply{})
			require.Error(t, err, "a cell on unit 2^31+1 is unit 1's cell, on a draining unit")
			assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
			assert.Contains(t, err.Error(), `field "v": location on storage unit 2147483649, past the highest unit id 2147483646`)
			_, err = c.ResolveKeys("p", []string{"k"}, nil, false)
			assert.Error(t, err, "no key made")
		})
	}

	m := insert(t, c, "q", 1, "v")
	err = do(conn, wire.OpCommit, &wirepb.CommitRequest{Partition: "q", Indexes: m.Indexes, Fields: field(one)}, &wirepb.CellsReply{})
	require.Error(t, err)
	assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
	assert.Contains(t, err.Error(), "storage unit 2147483649")
	_, err = c.ProductionStatus("q", []string{"v"})
	assert.ErrorIs(t, err, engine.ErrNotFound, "nothing committed: the partition has no field v")
}
