package client

// Rebalancing: cells move from units fuller than the cluster (by the
// fraction of their capacity in use) to emptier ones, with the drain's
// mover (drain.go): copy, commit with a compare-and-set, then the
// controller frees the old bytes. A unit's figures are its last
// heartbeat's, and a unit gives memory back only when every cell of an
// extent has left it, so a rebalance moves about the excess it sees once,
// not until the figures agree.

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/tqgo/tq/engine"
)

// RebalanceConfig tunes [Client.Rebalance].
type RebalanceConfig struct {
	// Tolerance is the fraction of a unit's capacity by which its use may
	// exceed the cluster's mean before cells move off it (0: 0.05).
	Tolerance float64
	// PageCells, PageBytes and Progress are as in [DrainConfig].
	PageCells int
	PageBytes int64
	Progress  func(DrainStats)
}

// Rebalance moves cells from the live units that are not draining and
// use more of their capacity than the cluster does as a whole (by more
// than cfg.Tolerance of their capacity) to those that use less, each
// source giving about its excess, the emptiest target taking first.
// Readers see no missing cell, as in [Client.Drain].
//
// Errors: [engine.ErrNotSupported] when the client's metadata service
// cannot move cells; [engine.ErrInvalid] for a tolerance outside [0, 1).
func (c *Client) Rebalance(ctx context.Context, cfg RebalanceConfig) (DrainStats, error) {
	var st DrainStats
	mv, ok := c.meta.(cellMover)
	lister, ok2 := c.meta.(interface {
		Units(ctx context.Context) ([]engine.UnitInfo, error)
	})
	if !ok || !ok2 {
		return st, &engine.OpError{Op: "rebalance", Err: fmt.Errorf("the metadata service %T cannot move cells: %w", c.meta, engine.ErrNotSupported)}
	}
	tol := cfg.Tolerance
	switch {
	case !(tol >= 0 && tol < 1): // NaN too
		return st, &engine.OpError{Op: "rebalance", Err: fmt.Errorf("tolerance %v, want a fraction in [0, 1): %w", tol, engine.ErrInvalid)}
	case tol == 0:
		tol = 0.05
	}
	infos, err := lister.Units(ctx)
	if err != nil {
		return st, err
	}
	if c.disc != nil {
		c.disc.learn(ctx, c, false)
	}
	var units []engine.UnitInfo
	var used, capacity int64
	for _, u := range infos {
		if u.Alive && !u.Draining && u.Capacity > 0 {
			units = append(units, u)
			used += u.Used
			capacity += u.Capacity
		}
	}
	if len(units) < 2 {
		return st, nil
	}
	mean := float64(used) / float64(capacity)
	// room is what each target may take before it reaches the mean.
	room := map[engine.UnitID]int64{}
	var sources []engine.UnitInfo
	for _, u := range units {
		switch excess := float64(u.Used) - mean*float64(u.Capacity); {
		case excess > tol*float64(u.Capacity):
			sources = append(sources, u)
		case excess < 0:
			room[u.ID] = int64(-excess)
		}
	}
	slices.SortFunc(sources, func(a, b engine.UnitInfo) int {
		return cmp.Compare(float64(b.Used)/float64(b.Capacity), float64(a.Used)/float64(a.Capacity))
	})
	targets := func(size uint64) []DataUnit {
		var out []DataUnit
		for id := range room {
			if u, ok := c.tbl.Load().byID[id]; ok {
				out = append(out, u)
			}
		}
		slices.SortFunc(out, func(a, b DataUnit) int { return cmp.Compare(room[b.ID()], room[a.ID()]) })
		if len(out) > 0 {
			room[out[0].ID()] -= int64(size) // the first is the one written, almost always
		}
		return out
	}
	dcfg := DrainConfig{PageCells: cfg.PageCells, PageBytes: cfg.PageBytes, Progress: cfg.Progress}
	for _, src := range sources {
		cluster := c.tbl.Load().cluster // before the lookup, as Drain's
		du, err := c.unit(ctx, src.ID, "")
		if err != nil {
			continue
		}
		m := mover{c: c, mv: mv, src: du, cluster: cluster, cfg: dcfg, st: &st, targets: targets,
			budget: src.Used - int64(mean*float64(src.Capacity))}
		st.Passes++
		if _, _, err := m.pass(ctx); err != nil {
			return st, &engine.OpError{Op: "rebalance", Peer: fmt.Sprint(src.ID), Err: err}
		}
	}
	return st, nil
}
