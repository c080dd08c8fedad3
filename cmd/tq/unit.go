package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

const unitUsage = `usage:
  tq unit drain --controller ADDR [--wait] ID     stop placements on unit ID and move its cells to other units
  tq unit drain --controller ADDR --cancel ID     return unit ID to service (the same as undrain)
  tq unit undrain --controller ADDR ID            return unit ID to service
  tq unit rebalance --controller ADDR             move cells from fuller units to emptier ones

ADDR is the controller's (tcp://host:port or unix:///path; default $TQ_CONTROLLER).
A drain copies each cell to another unit, commits the copy, then frees the
old bytes: readers never see a missing cell. It returns when the unit holds
no cell; the unit stays registered and draining until undrained. A drain
killed midway can be run again: nothing is lost, and copies it left
uncommitted are freed by their unit's reconcile. A unit that registers
takes placements at once: adding capacity needs no command.
`

// unitCmd runs `tq unit`.
func unitCmd(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("unit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("controller", os.Getenv("TQ_CONTROLLER"), "the controller's address (default $TQ_CONTROLLER)")
	token := fs.String("token", "", "the cluster's shared secret (default: $TQ_TOKEN, else the token file in this user's data directory). Prefer $TQ_TOKEN: other users of this host see a command line (ps).")
	cancelDrain := fs.Bool("cancel", false, "with drain: return the unit to service instead (cells already moved stay where they are)")
	wait := fs.Bool("wait", false, "with drain: after the cells are moved, wait until the unit reports holding no bytes (its frees applied)")
	timeout := durationFlag(fs, "timeout", time.Hour, "give up after this `duration`")
	transport := fs.String("transport", "", "how to reach the units' data: tcp, shm, rdma (default: the best for each)")
	progress := durationFlag(fs, "progress", time.Second, "with drain or rebalance: report progress at most once in this `duration` (0: after every page)")
	pageCells := fs.Int("page-cells", 0, "with drain or rebalance: cells moved per step (0: 4096)")
	tolerance := fs.Float64("tolerance", 0.05, "with rebalance: the fraction of its capacity by which a unit's use may exceed the cluster's mean before cells move off it, from 0 to below 1 (0: the default, 0.05)")
	fs.Usage = func() { fmt.Fprint(fs.Output(), unitUsage); fs.PrintDefaults() }
	// The verb is the first argument that is not a flag: -h is help, as
	// for the other commands, not a verb.
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return errors.New("unit: want drain, undrain or rebalance")
	}
	verb := pos[0]
	pos = pos[1:]
	if verb != "drain" && verb != "undrain" && verb != "rebalance" {
		fs.Usage()
		return fmt.Errorf("unit: unknown verb %q: want drain, undrain or rebalance", verb)
	}
	if err := checkUnitFlags(fs, verb, *cancelDrain); err != nil {
		return err
	}
	if *timeout <= 0 {
		return fmt.Errorf("unit %s: --timeout %v: must be positive", verb, *timeout)
	}
	if *pageCells < 0 {
		return fmt.Errorf("unit %s: --page-cells %d: want 0 or more", verb, *pageCells)
	}
	if *progress < 0 {
		return fmt.Errorf("unit %s: --progress %v: want 0 or more", verb, *progress)
	}
	report := func(what string) func(client.DrainStats) {
		last := time.Now()
		return func(st client.DrainStats) {
			if time.Since(last) >= *progress {
				last = time.Now()
				fmt.Fprintf(stdout, "tq unit: %s: moved %d cells (%s) so far\n", what, st.Moved, bytesString(st.Bytes))
			}
		}
	}
	if verb == "rebalance" {
		if len(pos) != 0 {
			fs.Usage()
			return fmt.Errorf("unit rebalance: takes no unit id, got %s", argsString(pos))
		}
		cfg := client.RebalanceConfig{Tolerance: *tolerance, PageCells: *pageCells, Progress: report("rebalance")}
		return rebalance(ctx, *addr, controllerFrom(fs), *token, *transport, cfg, *timeout, stdout)
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("unit %s: want one unit ID, got %s", verb, argsString(pos))
	}
	n, err := strconv.ParseUint(pos[0], 10, 31)
	if err != nil || n == 0 {
		return fmt.Errorf("unit %s: %q is not a unit id (a positive integer, as tq stat lists them)", verb, pos[0])
	}
	id := engine.UnitID(n)
	if *addr == "" {
		fs.Usage()
		return fmt.Errorf("unit %s: no controller address: give --controller ADDR or set $TQ_CONTROLLER", verb)
	}
	if err := checkDialAddr("unit "+verb, controllerFrom(fs), *addr); err != nil {
		return err
	}
	tok, err := client.FindToken(*token)
	if err != nil {
		return err
	}
	ctx, cancel, explain := flagTimeout(ctx, "unit "+verb, *timeout)
	defer cancel()
	defer func() { err = explain(err) }()
	if verb == "undrain" || *cancelDrain {
		m, err := client.DialMeta(ctx, *addr, client.RemoteConfig{Token: tok, Name: "tq-unit"})
		if err != nil {
			return err
		}
		defer m.Close()
		if _, err := m.DrainUnit(ctx, id, false); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "tq unit: unit %d takes placements again\n", id)
		return nil
	}
	c, err := client.Connect(ctx, *addr, client.ConnectConfig{Token: tok, Name: "tq-unit-drain", Transport: *transport})
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	st, err := c.Drain(ctx, id, client.DrainConfig{PageCells: *pageCells, Progress: report(fmt.Sprintf("unit %d", id))})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tq unit: unit %d drained: moved %d cells (%s) in %v, %d passes, %d copies of changed cells freed\n",
		id, st.Moved, bytesString(st.Bytes), time.Since(start).Round(time.Millisecond), st.Passes, st.Skipped)
	if !*wait {
		return nil
	}
	return waitEmpty(ctx, c, id, stdout)
}

// unitFlagUse names, for each flag that only some verbs of `tq unit` use,
// what uses it; --controller, --token and --timeout serve every verb.
var unitFlagUse = map[string]struct {
	verbs []string // "drain" here is a drain without --cancel
	what  string
}{
	"cancel":     {[]string{"drain", "drain --cancel"}, "drain"},
	"wait":       {[]string{"drain"}, "drain"},
	"tolerance":  {[]string{"rebalance"}, "rebalance"},
	"page-cells": {[]string{"drain", "rebalance"}, "drain or rebalance"},
	"progress":   {[]string{"drain", "rebalance"}, "drain or rebalance"},
	"transport":  {[]string{"drain", "rebalance"}, "drain or rebalance"},
}

// checkUnitFlags refuses a flag given that verb does not use: it would
// be ignored. A drain with --cancel only returns the unit to service, as
// undrain does, and uses none of a drain's flags.
func checkUnitFlags(fs *flag.FlagSet, verb string, cancel bool) error {
	if verb == "drain" && cancel {
		verb = "drain --cancel"
	}
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		if use, ok := unitFlagUse[f.Name]; ok && !slices.Contains(use.verbs, verb) {
			errs = append(errs, fmt.Errorf("unit %s: --%s is for %s; %s does not use it", verb, f.Name, use.what, verb))
		}
	})
	return errors.Join(errs...)
}

// waitEmpty waits until unit id reports no bytes in use: the controller
// has handed it the moved cells' old ranges and it freed them (leases
// readers still hold keep theirs until released).
func waitEmpty(ctx context.Context, c *client.Client, id engine.UnitID, stdout io.Writer) error {
	m, ok := c.Meta().(*client.RemoteMeta)
	if !ok {
		return nil
	}
	for {
		units, err := m.Units(ctx)
		if err != nil {
			return err
		}
		for _, u := range units {
			if u.ID == id && u.Used == 0 {
				fmt.Fprintf(stdout, "tq unit: unit %d holds no bytes\n", id)
				return nil
			}
		}
		// A put slower than the drain's settle may have landed since.
		if cells, _, err := m.UnitCells(ctx, id, nil, 1, 0); err != nil {
			return err
		} else if len(cells) > 0 {
			st, err := c.Drain(ctx, id, client.DrainConfig{Settle: time.Millisecond})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "tq unit: unit %d: moved %d more cells (%s) that landed after the drain\n", id, st.Moved, bytesString(st.Bytes))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unit %d still reports bytes in use: %w", id, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// controllerFrom says where tq unit's controller address came from, for
// an error about it: --controller, else $TQ_CONTROLLER.
func controllerFrom(fs *flag.FlagSet) string {
	from := "$TQ_CONTROLLER"
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "controller" {
			from = "--controller"
		}
	})
	return from
}

// rebalance runs `tq unit rebalance`; addrFrom says where addr came
// from (see controllerFrom).
func rebalance(ctx context.Context, addr, addrFrom, token, transport string, cfg client.RebalanceConfig, timeout time.Duration, stdout io.Writer) (err error) {
	// NaN passes neither comparison: it is refused too.
	if !(cfg.Tolerance >= 0 && cfg.Tolerance < 1) {
		return fmt.Errorf("unit rebalance: --tolerance %v: want a fraction from 0 to below 1 (0: the default, 0.05)", cfg.Tolerance)
	}
	if addr == "" {
		return errors.New("unit rebalance: no controller address: give --controller ADDR or set $TQ_CONTROLLER")
	}
	if err := checkDialAddr("unit rebalance", addrFrom, addr); err != nil {
		return err
	}
	tok, err := client.FindToken(token)
	if err != nil {
		return err
	}
	ctx, cancel, explain := flagTimeout(ctx, "unit rebalance", timeout)
	defer cancel()
	defer func() { err = explain(err) }()
	c, err := client.Connect(ctx, addr, client.ConnectConfig{Token: tok, Name: "tq-unit-rebalance", Transport: transport})
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	st, err := c.Rebalance(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tq unit: rebalanced: moved %d cells (%s) off %d units in %v\n", st.Moved, bytesString(st.Bytes), st.Passes, time.Since(start).Round(time.Millisecond))
	return nil
}

// argsString says which arguments a command got where it wanted another
// number: "0 arguments", "1 argument: [\"2\"]", "2 arguments: [\"1\" \"2\"]".
func argsString(args []string) string {
	switch len(args) {
	case 0:
		return "0 arguments"
	case 1:
		return fmt.Sprintf("1 argument: %q", args)
	}
	return fmt.Sprintf("%d arguments: %q", len(args), args)
}
