package controller

import (
	"fmt"
	"strings"
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

// TestCommitRefusesLocationsEndingPast2To64 commits, through the Go API
// (Controller.Commit and CommitKeys, which an embedded client calls with
// no wire decoding in between), cells whose bytes end past 2^64: a run of
// 3 cells of 8 bytes from 2^64-8, whose cells 1 and 2 (CellRun.Cell)
// wrapped around to offsets 0 and 8, another key's bytes at the start of
// the segment; a run whose Count × Len itself overflows; and a cell from
// 2^64-8 of 16 bytes. They were taken, and, logged in the form the wire
// decoder refuses ("address run overflows"), made the controller's log
// unloadable: the next start failed. They are refused, naming the field,
// row or key, and the bound, and nothing is logged.
func TestCommitRefusesLocationsEndingPast2To64(t *testing.T) {
	const top = ^uint64(0) - 7 // 2^64 - 8
	at := func(off, n uint64) engine.RemoteAddr {
		return engine.RemoteAddr{Segment: 1, Gen: 1, Offset: off, Len: n}
	}
	dense := func(cf engine.CommitField) engine.CommitField {
		cf.Name, cf.DType, cf.Kind = "x", engine.Int64, engine.Dense
		return cf
	}
	opaque := func(cf engine.CommitField) engine.CommitField {
		cf.Name, cf.DType, cf.Kind = "x", engine.Bytes, engine.Opaque
		return cf
	}
	for _, tc := range []struct {
		name string
		cf   engine.CommitField
		want string
	}{
		{"run wrapping around", dense(engine.CommitField{Runs: []engine.CellRun{{Unit: 1, First: at(top, 8), Count: 3}}}),
			`field "x": run of 3 cells of 8 bytes from offset 18446744073709551608 on storage unit 1 ends past 2^64`},
		{"second run wrapping around", dense(engine.CommitField{Runs: []engine.CellRun{{Unit: 1, First: at(0, 8), Count: 1}, {Unit: 1, First: at(top, 8), Count: 2}}}),
			`field "x": run of 2 cells of 8 bytes from offset 18446744073709551608 on storage unit 1 ends past 2^64`},
		{"run whose count times length overflows", opaque(engine.CommitField{Runs: []engine.CellRun{{Unit: 1, First: at(0, 1<<63), Count: 3}}}),
			`field "x": run of 3 cells of 9223372036854775808 bytes from offset 0 on storage unit 1 ends past 2^64`},
		{"cell wrapping around", opaque(engine.CommitField{Locs: []engine.CellLoc{{Unit: 1, Addr: at(0, 8)}, {Unit: 1, Addr: at(top, 16)}, {Unit: 1, Addr: at(8, 8)}}}),
			`field "x", %s: location of 16 bytes from offset 18446744073709551608 on storage unit 1 ends past 2^64`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, DefaultConfig())
			m := insert(t, c, "p", 3, "x")
			_, err := c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{tc.cf}})
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), strings.ReplaceAll(tc.want, "%s", "row 1"))
			_, err = c.CommitKeys(engine.KeysCommit{Partition: "k", Keys: []string{"a", "b", "c"}, Fields: []engine.CommitField{tc.cf}})
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), strings.ReplaceAll(tc.want, "%s", `key "b"`))
			crash(t, c) // the log alone, as after a killed process
			c = openDurable(t, dir, DefaultConfig())
			require.NoError(t, c.Close())
		})
	}
}

// TestCommitRefusesLocationsPastUnitCapacity sends COMMIT_KEYS and COMMIT
// by hand whose cells a registered unit could not have handed out: an
// opaque cell of 1 TiB on a unit of 1 GiB, whose every reader over TCP
// allocated the 1 TiB before the unit checked anything (and died out of
// memory); a run ending past the capacity. They were taken; they are refused with CODE_INVALID naming the
// field, key or row, unit, offset, length and capacity, and change
// nothing. Cells ending exactly at the capacity, on LostUnit, on a unit
// that reported no capacity or on one not registered (client.New may
// name units it made itself) are taken as before.
func TestCommitRefusesLocationsPastUnitCapacity(t *testing.T) {
	const capacity = 1 << 30
	c := newController(t, DefaultConfig())
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	var reg wirepb.RegisterReply
	require.NoError(t, do(conn, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 5, Capacity: capacity}, &reg))
	require.Equal(t, uint32(1), reg.UnitId)
	require.NoError(t, do(conn, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 6}, &reg)) // unit 2: no capacity reported
	require.Equal(t, uint32(2), reg.UnitId)

	opaque := func(locs *wirepb.Addrs) []*wirepb.CommitField {
		return []*wirepb.CommitField{{Name: "v", Dtype: "bytes", Kind: "opaque", HasLocs: true, Locs: locs}}
	}
	cell := func(unit uint32, off, n uint64) *wirepb.Addrs {
		return &wirepb.Addrs{Unit: []uint32{unit}, Segment: []uint32{1}, Gen: []uint32{1}, Offset: []uint64{off}, Len: []uint64{n}}
	}
	run := func(unit uint32, count uint32, off, n uint64) *wirepb.Addrs {
		return &wirepb.Addrs{RunCount: []uint32{count}, RunUnit: []uint32{unit}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{off}, RunLen: []uint64{n}}
	}
	commitKeys := func(keys []string, locs *wirepb.Addrs) error {
		return do(conn, wire.OpCommitKeys, &wirepb.CommitKeysRequest{Partition: "p", Keys: keys, Fields: opaque(locs)}, &wirepb.CommitKeysReply{})
	}

	for _, tc := range []struct {
		name string
		keys []string
		locs *wirepb.Addrs
		want string
	}{
		{"a cell of 1 TiB", []string{"k"}, cell(1, 0, 1<<40),
			`field "v", key "k": location of 1099511627776 bytes from offset 0 on storage unit 1 ends at byte 1099511627776, past the unit's capacity of 1073741824 bytes`},
		{"a cell one byte past the end", []string{"k"}, cell(1, capacity-8, 9),
			`field "v", key "k": location of 9 bytes from offset 1073741816 on storage unit 1 ends at byte 1073741825, past the unit's capacity of 1073741824 bytes`},
		{"a run past the end", []string{"a", "b"}, run(1, 2, capacity-8, 8),
			`field "v", key "a": run of 2 cells of 8 bytes from offset 1073741816 on storage unit 1 ends at byte 1073741832, past the unit's capacity of 1073741824 bytes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := commitKeys(tc.keys, tc.locs)
			require.Error(t, err)
			assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
			assert.Contains(t, err.Error(), tc.want)
			_, err = c.ResolveKeys("p", tc.keys, nil, false)
			assert.ErrorIs(t, err, engine.ErrNotFound, "nothing committed: a reader finds no key")
		})
	}

	m := insert(t, c, "q", 1, "v")
	err := do(conn, wire.OpCommit, &wirepb.CommitRequest{Partition: "q", Indexes: m.Indexes, Fields: opaque(cell(1, 0, 1<<40))}, &wirepb.CellsReply{})
	require.Error(t, err)
	assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
	assert.Contains(t, err.Error(), fmt.Sprintf(`field "v", row %d: location of 1099511627776 bytes from offset 0 on storage unit 1`, m.Indexes[0]))
	_, err = c.ProductionStatus("q", []string{"v"})
	assert.ErrorIs(t, err, engine.ErrNotFound, "nothing committed: the partition has no field v")

	// Taken: up to the last byte of the capacity, on LostUnit, on a unit
	// that reported no capacity.
	require.NoError(t, commitKeys([]string{"end"}, cell(1, capacity-8, 8)))
	require.NoError(t, commitKeys([]string{"r1", "r2"}, run(1, 2, capacity-16, 8)))
	require.NoError(t, commitKeys([]string{"lost"}, cell(uint32(engine.LostUnit), 0, 8)))
	require.NoError(t, commitKeys([]string{"nocap"}, cell(2, 0, 1<<40)))
	require.NoError(t, commitKeys([]string{"unregistered"}, cell(9, 0, 1<<40)))
	require.NoError(t, do(conn, wire.OpCommit, &wirepb.CommitRequest{Partition: "q", Indexes: m.Indexes, Fields: opaque(cell(1, capacity-1, 1))}, &wirepb.CellsReply{}))

	// A unit registered now is known at once.
	err = commitKeys([]string{"u3"}, cell(3, 0, 65))
	require.NoError(t, err, "unit 3 is not registered yet")
	require.NoError(t, do(conn, wire.OpRegister, &wirepb.RegisterRequest{HostId: "h", Incarnation: 7, Capacity: 64}, &reg))
	require.Equal(t, uint32(3), reg.UnitId)
	require.NoError(t, commitKeys([]string{"u3"}, cell(3, 0, 64)))
	err = commitKeys([]string{"u3"}, cell(3, 0, 65))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "past the unit's capacity of 64 bytes")
}

// TestReplayTakesCommitsPastUnitCapacity replays a log written before
// commits were checked against the units' capacities: it holds a cell of
// 1 TiB on a unit of 1 GiB.
// The log still loads, with the cells as committed.
func TestReplayTakesCommitsPastUnitCapacity(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, DefaultConfig())
	_, err := c.Units().Register(engine.UnitInfo{Incarnation: 5, Capacity: 1 << 30}, true)
	require.NoError(t, err)
	m := insert(t, c, "p", 2, "v")
	fields := []engine.CommitField{{Name: "v", DType: engine.Bytes, Kind: engine.Opaque, Locs: []engine.CellLoc{
		{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Len: 1 << 40}},
		{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 1 << 30, Len: 8}},
	}}}
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: fields})
	require.ErrorIs(t, err, engine.ErrInvalid, "refused now")
	// Logged as the controller did before the rule.
	p, _ := c.lock("p")
	c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Commit{Commit: commitOp(p, m.Indexes, fields)}})
	p.mu.Unlock()
	crash(t, c)

	c = openDurable(t, dir, DefaultConfig())
	defer c.Close()
	st, err := c.ProductionStatus("p", []string{"v"})
	require.NoError(t, err)
	assert.Equal(t, [][]bool{{true}, {true}}, st.Produced, "both cells replayed")
}
