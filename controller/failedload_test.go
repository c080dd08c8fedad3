package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// rowsState is a GRPO or rank-aware sampler's state document keeping row
// for task "t" of partition "p".
func rowsState(kind string, n int, rows string) []byte {
	return fmt.Appendf(nil, `{"version":1,"sampler":%q,"n":%d,"entries":[{"partition":"p","task":"t","dp_rank":0,"batch_index":0,"rows":[%s]}]}`, kind, n, rows)
}

// samplerDocs returns the state of c's samplers by spec ("" for the
// configured one).
func samplerDocs(t *testing.T, c *Controller) map[string]string {
	t.Helper()
	var head wirepb.StateHeader
	require.NoError(t, c.samplerState(&head))
	out := map[string]string{"": string(head.Sampler)}
	for _, ns := range head.Samplers {
		out[ns.Spec] = string(ns.State)
	}
	return out
}

// A checkpoint load that fails on the state of one of its samplers
// leaves every sampler as it was, the configured one and those fetches
// chose, and makes no sampler for a spec it named: the controller goes on
// serving its partitions with their own sampler state. It used to keep
// the state of every sampler loaded before the one that failed (the
// configured sampler's first), beside the partitions the load did not
// replace, and a sampler for each spec it met.
func TestFailedLoadLeavesTheSamplersAsTheyWere(t *testing.T) {
	head := func(configured []byte, named ...*wirepb.NamedSamplerState) *wirepb.StateHeader {
		return &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextIndex: 9, NextGen: 5, NextUnitId: 1, Sampler: configured, Samplers: named}
	}
	grpo2 := &wirepb.NamedSamplerState{Spec: "grpo:2", State: rowsState("grpo", 2, "4,5")}
	for _, tc := range []struct {
		name string
		head *wirepb.StateHeader
	}{
		{"configured sampler's state damaged", head([]byte("{"), grpo2)},
		{"named sampler's state damaged", head(rowsState("rank_aware", 0, "7"), grpo2,
			&wirepb.NamedSamplerState{Spec: "grpo:4", State: []byte("{")})},
		{"named sampler's state for another group size", head(rowsState("rank_aware", 0, "7"), grpo2,
			&wirepb.NamedSamplerState{Spec: "grpo:4", State: rowsState("grpo", 2, "4,5")})},
		{"named sampler keeps no state", head(rowsState("rank_aware", 0, "7"), grpo2,
			&wirepb.NamedSamplerState{Spec: "sequential", State: []byte("{}")})},
		{"named sampler spec unknown", head(rowsState("rank_aware", 0, "7"), grpo2,
			&wirepb.NamedSamplerState{Spec: "nonesuch", State: []byte("{}")})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, Config{Sampler: sampler.NewRankAware()})
			// The state before: sampler state of the configured sampler
			// and of grpo:4, loaded from a checkpoint, and a partition.
			good, bad := t.TempDir(), t.TempDir()
			writeStateFile(t, filepath.Join(good, stateFile), head(rowsState("rank_aware", 0, "3"),
				&wirepb.NamedSamplerState{Spec: "grpo:4", State: rowsState("grpo", 4, "0,1,2,3")}), nil, nil, nil)
			_, err := c.Load(good)
			require.NoError(t, err)
			insert(t, c, "keep", 2, "x")
			wantSamplers, want := samplerDocs(t, c), stateBytes(t, c)

			writeStateFile(t, filepath.Join(bad, stateFile), tc.head, nil, nil, nil)
			_, err = c.Load(bad)
			require.Error(t, err)
			assert.True(t, errors.Is(err, engine.ErrCorrupt) || errors.Is(err, engine.ErrInvalid), "got %v, want ErrCorrupt or ErrInvalid", err)
			assert.Equal(t, []string{"keep"}, c.Partitions())
			assert.Equal(t, wantSamplers, samplerDocs(t, c), "the samplers after the failed load")
			assert.True(t, bytes.Equal(want, stateBytes(t, c)), "the state after the failed load differs")
		})
	}
}

// failingUnit is a storage unit whose writes fail once ok of them went
// through.
type failingUnit struct {
	*ckptUnit
	ok atomic.Int32
}

var errUnitWrite = errors.New("unit write failed")

func (u *failingUnit) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	if u.ok.Add(-1) < 0 {
		return nil, errUnitWrite
	}
	return u.ckptUnit.Write(ctx, extents)
}

// refusingLoader is the sequential sampler with a state it saves and
// cannot load.
type refusingLoader struct{ engine.Sampler }

var errLoadState = errors.New("load state failed")

func (refusingLoader) SaveState() ([]byte, error) { return []byte("{}"), nil }
func (refusingLoader) LoadState([]byte) error     { return errLoadState }

// A checkpoint load with data that fails after it wrote some of the
// cells to the units (a unit write fails, or taking the state over
// does) leaves the state as it was and queues the extents it wrote to be
// freed: nothing references them. They used to stay on the unit until
// its next reconcile.
func TestFailedLoadFreesTheExtentsItWrote(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ok    int32 // unit writes that succeed
		setup func(t *testing.T, c *Controller, s *Server) string
		want  error
	}{
		{"unit write fails", 1, func(*testing.T, *Controller, *Server) string { return "ck" }, errUnitWrite},
		{"take over fails", 100, func(t *testing.T, c *Controller, s *Server) string {
			c.sampler = refusingLoader{c.sampler}
			_, err := s.SaveCheckpoint(context.Background(), "ck2", nil)
			require.NoError(t, err)
			return "ck2"
		}, errLoadState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s0, unit, dir := ckptWithData(t)
			name := tc.setup(t, c, s0)
			id := c.units.Units()[0].ID
			want := stateBytes(t, c)
			fu := &failingUnit{ckptUnit: unit}
			fu.ok.Store(tc.ok)
			s := NewServer(c, ServerConfig{CheckpointDir: dir, Dial: func(context.Context, engine.UnitInfo) (engine.DataConn, error) { return fu, nil }})
			t.Cleanup(func() { s.Close() })

			require.ErrorIs(t, s.LoadCheckpoint(context.Background(), name), tc.want)
			assert.True(t, bytes.Equal(want, stateBytes(t, c)), "the state after the failed load differs")
			var wrote []engine.RemoteAddr
			for seg, b := range unit.written() {
				wrote = append(wrote, engine.RemoteAddr{Segment: seg, Gen: 1, Len: uint64(len(b))})
			}
			require.NotEmpty(t, wrote)
			freed, _, _ := s.frees.take(context.Background(), id, 0, 0)
			assert.ElementsMatch(t, wrote, freed, "the extents the load wrote are freed")
		})
	}
}
