package main

// Draining a storage unit with real processes: `tq serve` as a controller
// and three units, a reader and a writer as helper processes (this test
// binary re-executed: TestDrainHelper), and `tq unit drain` run, killed
// with SIGKILL midway, and run again.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
)

// drainRows is the rows the reader checks, written before the drain.
const drainRows = 96

// TestDrainHelper is not a test: it is the body of the drain test's
// helper processes. A reader reads the rows written before the drain in
// a loop — by key, by a meta resolved once before the drain (whose
// locations go stale), and as views held a while — and checks every
// byte; a writer keeps overwriting keys and writing new ones. Each runs
// until the file $TQ_STOP_FILE exists, prints FAIL lines for what went
// wrong, and HELPER OK when nothing did.
func TestDrainHelper(t *testing.T) {
	role := os.Getenv("TQ_DRAIN_HELPER")
	if role == "" {
		t.Skip("runs only as a helper process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, os.Getenv("TQ_ADDR"), client.ConnectConfig{Token: os.Getenv("TQ_DRAIN_TOKEN"), WaitForUnits: true, Name: role})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	stopped := func() bool {
		_, err := os.Stat(os.Getenv("TQ_STOP_FILE"))
		return err == nil
	}
	failed := 0
	fail := func(format string, args ...any) {
		failed++
		fmt.Printf("FAIL "+format+"\n", args...)
	}
	switch role {
	case "reader":
		keys := helperKeys(0, drainRows)
		want := helperBatch(0, drainRows)
		stale, err := c.MetaByKeys(ctx, "b", keys, nil, false)
		if err != nil {
			t.Fatalf("resolve the batch rows: %v", err)
		}
		check := func(how string, got *engine.Batch) {
			for _, f := range want.Fields() {
				if gc := got.Col(f.Name); gc == nil || !gc.Equal(f.Col) {
					fail("%s: field %q differs", how, f.Name)
				}
			}
		}
		n := 0
		for ; n < 3 || !stopped(); n++ {
			if got, err := kv.BatchGet(ctx, "p", keys); err != nil {
				fail("get by key: %v", err)
			} else {
				check("get by key", got)
				got.Release()
			}
			if got, err := c.GetCopy(ctx, stale); err != nil {
				fail("get by a meta resolved before the drain: %v", err)
			} else {
				check("get by a stale meta", got)
			}
			if v, err := kv.BatchGetView(ctx, "p", keys[:drainRows/2]); err != nil {
				fail("view: %v", err)
			} else {
				time.Sleep(5 * time.Millisecond) // hold the lease across moves
				half, _ := want.Slice(0, drainRows/2)
				for _, f := range half.Fields() {
					if gc := v.Col(f.Name); gc == nil || !gc.Equal(f.Col) {
						fail("view: field %q differs", f.Name)
					}
				}
				v.Release()
			}
		}
		fmt.Printf("READS %d\n", n)
	case "writer":
		n := 0
		for ; n < 3 || !stopped(); n++ {
			keys := []string{fmt.Sprintf("w%d", n%16), fmt.Sprintf("new%d", n)}
			b := helperBatch(n, 2)
			if _, err := kv.BatchPut(ctx, "w", keys, b, nil); err != nil {
				fail("put %d: %v", n, err)
				continue
			}
			got, err := kv.BatchGetCopy(ctx, "w", keys)
			if err != nil {
				fail("read back put %d: %v", n, err)
				continue
			}
			for _, f := range b.Fields() {
				if !got.Col(f.Name).Equal(f.Col) {
					fail("read back put %d: field %q differs", n, f.Name)
				}
			}
		}
		fmt.Printf("PUTS %d\n", n)
	}
	if failed == 0 {
		fmt.Println("HELPER OK")
	}
}

// drainCluster is a controller and its units, each its own `tq serve`.
type drainCluster struct {
	bin   string
	ctrl  *serveProc
	addr  string
	units []*serveProc
}

func startDrainCluster(t *testing.T, units int) *drainCluster {
	t.Helper()
	bin := tqBinary(t)
	ctrl := startServe(t, nil, bin, "--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--heartbeat", "100ms")
	dc := &drainCluster{bin: bin, ctrl: ctrl, addr: ctrl.addr("tcp")}
	for range units {
		dc.addUnit(t)
	}
	return dc
}

// addUnit starts a unit reached over shared memory by clients on this
// host, which reconciles often with a short grace: a copy a killed drain
// left uncommitted is freed within about a second.
func (dc *drainCluster) addUnit(t *testing.T) {
	t.Helper()
	u := startServeIn(t, dc.ctrl.dataDir, nil, dc.bin, "--role", "unit", "--controller", dc.addr, "--socket-dir", t.TempDir(),
		"--capacity", "64MiB", "--reconcile-interval", "200ms", "--reconcile-grace", "1s", "--metrics", "127.0.0.1:0")
	dc.units = append(dc.units, u)
}

// tq runs the tq binary as a client of the same user.
func (dc *drainCluster) tq(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, dc.bin, args...)
	cmd.Env = append(append(environWithout(auth.EnvToken), dc.ctrl.env()...), env...)
	return cmd
}

// cellsOn counts the cells located on unit.
func cellsOn(ctx context.Context, t *testing.T, m *client.RemoteMeta, unit engine.UnitID) int {
	t.Helper()
	n := 0
	var cursor []byte
	for {
		cells, next, err := m.UnitCells(ctx, unit, cursor, 0, 0)
		if err != nil {
			t.Fatalf("unit cells of %d: %v", unit, err)
		}
		n += len(cells)
		if next == nil {
			return n
		}
		cursor = next
	}
}

// unitsOf returns the units that hold the cells of keys.
func unitsOf(ctx context.Context, t *testing.T, c *client.Client, partition string, keys []string) map[engine.UnitID]int {
	t.Helper()
	m, err := c.MetaByKeys(ctx, partition, keys, nil, false)
	if err != nil {
		t.Fatalf("resolve %s: %v", partition, err)
	}
	out := map[engine.UnitID]int{}
	for _, locs := range m.Cells {
		for _, l := range locs {
			out[l.Unit]++
		}
	}
	return out
}

// waitUsed waits until every unit of ids reports used(id) bytes in use.
func waitUsed(ctx context.Context, t *testing.T, m *client.RemoteMeta, want func(engine.UnitInfo) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		us, err := m.Units(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ok := true
		for _, u := range us {
			ok = ok && (!u.Alive || want(u))
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: units after 20 s: %+v", what, us)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDrainUnderLoad drains a unit while a reader process reads its rows
// in a loop and a writer process keeps writing: every read returns the
// right bytes and none fails; the drain killed with SIGKILL midway and run
// again completes; afterwards the unit holds no cell and no byte, takes
// no new put, every row reads back from the other units, and once
// everything is cleared no unit holds a byte (no copy leaked). Units
// started after a client connected take its puts once it learns of them,
// and a restarted controller still knows the unit is draining.
func TestDrainUnderLoad(t *testing.T) {
	dc := startDrainCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	token := dc.ctrl.token(t)
	c, err := client.Connect(ctx, dc.addr, client.ConnectConfig{Token: token, WaitForUnits: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	keys := helperKeys(0, drainRows)
	for _, part := range []string{"p", "b"} {
		if _, err := kv.BatchPut(ctx, part, keys, helperBatch(0, drainRows), nil); err != nil {
			t.Fatal(err)
		}
	}
	const drained = engine.UnitID(1)
	if got := unitsOf(ctx, t, c, "p", keys); len(got) != 1 || got[drained] == 0 {
		t.Fatalf("rows written with one unit are on units %v, want all on unit %d", got, drained)
	}

	// Units that register after the client connected take its puts.
	dc.addUnit(t)
	dc.addUnit(t)
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		k := []string{fmt.Sprintf("add%d", i)}
		if _, err := kv.BatchPut(ctx, "add", k, helperBatch(i, 1), nil); err != nil {
			t.Fatal(err)
		}
		if got := unitsOf(ctx, t, c, "add", k); got[drained] == 0 {
			break // on a unit that joined
		}
		if time.Now().After(deadline) {
			t.Fatal("a client connected before two units joined never wrote to them")
		}
		time.Sleep(20 * time.Millisecond)
	}

	stop := filepath.Join(t.TempDir(), "stop")
	env := []string{"TQ_ADDR=" + dc.addr, "TQ_DRAIN_TOKEN=" + token, "TQ_STOP_FILE=" + stop} // TestMain unsets $TQ_TOKEN
	var helpers []*exec.Cmd
	var outs []*syncBuffer
	for _, role := range []string{"reader", "writer"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDrainHelper$", "-test.v")
		cmd.Env = append(append(os.Environ(), "TQ_DRAIN_HELPER="+role), env...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		helpers, outs = append(helpers, cmd), append(outs, out)
	}
	time.Sleep(500 * time.Millisecond) // the helpers are connected and busy

	m, err := client.DialMeta(ctx, dc.addr, client.RemoteConfig{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before := cellsOn(ctx, t, m, drained)

	// A drain killed after its first step.
	first := dc.tq(ctx, nil, "unit", "drain", "--controller", dc.addr, "--page-cells", "8", "--progress", "0", "1")
	stdout, err := first.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	first.Stderr = os.Stderr
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		t.Logf("first drain: %s", sc.Text())
		if strings.Contains(sc.Text(), "moved") {
			first.Process.Signal(syscall.SIGKILL)
			break
		}
	}
	first.Wait()
	t.Logf("cells on unit %d: %d before the drain, %d after the killed one", drained, before, cellsOn(ctx, t, m, drained))

	out, err := dc.tq(ctx, nil, "unit", "drain", "--controller", dc.addr, "--wait", "--timeout", "15s", "1").CombinedOutput()
	t.Logf("second drain: %s", out)
	if err != nil || !strings.Contains(string(out), "drained") || !strings.Contains(string(out), "holds no bytes") {
		t.Fatalf("drain run again: %v\n%s\nthe units' figures:\n%s", err, out, unitFigures(ctx, c))
	}
	if n := cellsOn(ctx, t, m, drained); n != 0 {
		t.Fatalf("%d cells on unit %d after its drain", n, drained)
	}

	// A drained unit takes no new puts: the client learned it is
	// draining within a second.
	time.Sleep(1200 * time.Millisecond)
	if _, err := kv.BatchPut(ctx, "after", keys[:1], helperBatch(0, 1), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	after := helperKeys(1000, 40)
	if _, err := kv.BatchPut(ctx, "after", after, helperBatch(0, 40), nil); err != nil {
		t.Fatal(err)
	}
	if got := unitsOf(ctx, t, c, "after", after); got[drained] != 0 {
		t.Fatalf("puts after the drain placed cells on the drained unit: %v", got)
	}
	statOut, _ := dc.ctrl.tqStat(dc.bin, dc.addr)
	if !strings.Contains(string(statOut), "draining") {
		t.Errorf("tq stat does not show the draining unit:\n%s", statOut)
	}

	// The reader and writer saw nothing wrong, all along.
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, cmd := range helpers {
		err := cmd.Wait()
		for _, l := range strings.Split(outs[i].String(), "\n") {
			if strings.HasPrefix(l, "READS") || strings.HasPrefix(l, "PUTS") {
				t.Logf("helper %d: %s, none failed", i, l)
			}
		}
		if err != nil || !strings.Contains(outs[i].String(), "HELPER OK") {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i].String())
		}
	}
	for _, part := range []string{"p", "b"} {
		got, err := kv.BatchGetCopy(ctx, part, keys)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range helperBatch(0, drainRows).Fields() {
			if !got.Col(f.Name).Equal(f.Col) {
				t.Fatalf("partition %s field %q differs after the drain", part, f.Name)
			}
		}
		if got := unitsOf(ctx, t, c, part, keys); got[drained] != 0 {
			t.Fatalf("partition %s has cells on the drained unit: %v", part, got)
		}
	}

	// No copy leaked: with everything cleared, every unit frees every
	// byte (copies the killed drain never committed included).
	parts, err := m.Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if err := m.ClearPartition(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	waitUsed(ctx, t, m, func(u engine.UnitInfo) bool { return u.Used == 0 }, "bytes in use after clearing everything")

	// A restarted controller knows the unit is draining.
	dc.ctrl.kill()
	again := startServeIn(t, dc.ctrl.dataDir, nil, dc.bin, "--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir())
	m2, err := client.DialMeta(ctx, again.addr("tcp"), client.RemoteConfig{Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	us, err := m2.Units(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range us {
		if u.Draining != (u.ID == drained) {
			t.Fatalf("after a controller restart unit %d has draining %v", u.ID, u.Draining)
		}
	}
}

// unitFigures returns the units' tq_unit_ metrics, for a failure's
// message.
func unitFigures(ctx context.Context, c *client.Client) string {
	eps, err := c.MetricsEndpoints(ctx)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, ep := range eps {
		resp, err := http.Get(ep)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", ep, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "tq_unit_") && !strings.Contains(l, "_total") {
				fmt.Fprintf(&b, "%s\n", l)
			}
		}
	}
	return b.String()
}

// `tq unit rebalance --tolerance` outside [0, 1) is refused, naming the
// flag and the value. NaN parses (strconv.ParseFloat takes it) and passed
// both the command and client.Rebalance, every comparison with it being
// false: the rebalance moved nothing and reported success.
func TestRebalanceRefusesAToleranceOutOfRange(t *testing.T) {
	s := startInProcess(t, "--units", "2")
	for _, tol := range []string{"NaN", "-0.1", "1", "+Inf"} {
		var out strings.Builder
		err := run(t.Context(), []string{"unit", "rebalance", "--controller", s.local, "--tolerance", tol}, &out, io.Discard)
		want := "--tolerance " + tol + ": want a fraction from 0 to below 1"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--tolerance %s: got error %v (printed %q), want one containing %q", tol, err, out.String(), want)
		}
	}
	// 0 is the default.
	if err := run(t.Context(), []string{"unit", "rebalance", "--controller", s.local, "--tolerance", "0"}, io.Discard, io.Discard); err != nil {
		t.Errorf("--tolerance 0: %v", err)
	}
}

// TestDrainRefusals: bad input to `tq unit drain` fails with an error
// naming what was wrong, and loses nothing.
func TestDrainRefusals(t *testing.T) {
	dc := startDrainCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, dc.addr, client.ConnectConfig{Token: dc.ctrl.token(t), WaitForUnits: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	keys := helperKeys(0, 8)
	if _, err := kv.BatchPut(ctx, "p", keys, helperBatch(0, 8), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown unit", nil, []string{"drain", "--controller", dc.addr, "99"}, "storage unit 99 is not registered"},
		{"the last unit", nil, []string{"drain", "--controller", dc.addr, "1"}, "only live unit that is not draining"},
		{"no token", []string{"TQ_DATA_DIR=" + t.TempDir()}, []string{"drain", "--controller", dc.addr, "1"}, "unauthenticated"},
		{"not an id", nil, []string{"drain", "--controller", dc.addr, "one"}, `"one" is not a unit id`},
		{"no controller", []string{"TQ_CONTROLLER="}, []string{"drain", "1"}, "no controller address"},
		{"unknown verb", nil, []string{"remove", "1"}, `unknown verb "remove"`},
		{"undrain of an unknown unit", nil, []string{"undrain", "--controller", dc.addr, "99"}, "storage unit 99 is not registered"},
		{"rebalance with an id", nil, []string{"rebalance", "--controller", dc.addr, "1"}, "takes no unit id"},
		{"rebalance with a bad tolerance", nil, []string{"rebalance", "--controller", dc.addr, "--tolerance", "2"}, "tolerance 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := dc.tq(ctx, tc.env, append([]string{"unit"}, tc.args...)...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !strings.Contains(string(out), tc.want) {
				t.Fatalf("tq unit %s: got %v\n%s\nwant a failure saying %q", strings.Join(tc.args, " "), err, out, tc.want)
			}
		})
	}
	// Undraining a unit in service changes nothing.
	for _, args := range [][]string{{"undrain", "1"}, {"drain", "--cancel", "1"}} {
		out, err := dc.tq(ctx, nil, append([]string{"unit"}, append(args[:len(args)-1:len(args)-1], "--controller", dc.addr, args[len(args)-1])...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "unit 1 takes placements again") {
			t.Fatalf("tq unit %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// A rebalance with one unit has nothing to do.
	if out, err := dc.tq(ctx, nil, "unit", "rebalance", "--controller", dc.addr).CombinedOutput(); err != nil || !strings.Contains(string(out), "moved 0 cells") {
		t.Fatalf("rebalance of one unit: %v\n%s", err, out)
	}
	got, err := kv.BatchGetCopy(ctx, "p", keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range helperBatch(0, 8).Fields() {
		if !got.Col(f.Name).Equal(f.Col) {
			t.Fatalf("field %q differs after the refused drains", f.Name)
		}
	}
	us, err := c.Meta().(*client.RemoteMeta).Units(ctx)
	if err != nil || len(us) != 1 || us[0].Draining {
		t.Fatalf("units after refused drains: %+v, %v; want unit 1 in service", us, err)
	}
}

// `tq unit rebalance` moves --page-cells cells a step and reports its
// progress as --progress asks, as drain does; both were accepted and
// dropped (client.RebalanceConfig takes them).
func TestRebalanceTakesPageCellsAndProgress(t *testing.T) {
	s := startInProcess(t, "--heartbeat", "20ms")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, s.local, client.ConnectConfig{WaitForUnits: true, Name: "rebalance-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Half of 256 KiB, the excess, is over --tolerance 0.001 of 64 MiB.
	const rows = 64
	vals := make([]float32, rows*1024) // 4 KiB a row
	col, err := engine.DenseOf(vals, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kvapi.New(c).BatchPut(ctx, "p", helperKeys(0, rows), engine.MustBatch(engine.Field{Name: "x", Col: col}), nil); err != nil {
		t.Fatal(err)
	}
	// A second unit, empty: the rebalance moves about half the cells to it.
	if err := s.startUnit(ctx, s.local); err != nil {
		t.Fatal(err)
	}
	m := c.Meta().(*client.RemoteMeta)
	for {
		us, err := m.Units(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(us) == 2 && us[0].Used >= rows*4096 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the units' heartbeats never reported their use: %+v", us)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var out strings.Builder
	if err := run(ctx, []string{"unit", "rebalance", "--controller", s.local, "--tolerance", "0.001", "--page-cells", "1", "--progress", "0"}, &out, io.Discard); err != nil {
		t.Fatalf("rebalance: %v\n%s", err, out.String())
	}
	steps := strings.Count(out.String(), "so far")
	var moved int
	if _, err := fmt.Sscanf(out.String()[strings.LastIndex(out.String(), "rebalanced: "):], "rebalanced: moved %d cells", &moved); err != nil {
		t.Fatalf("no summary in:\n%s", out.String())
	}
	// A step of one cell each: a progress line for every cell moved.
	if moved < 2 || steps < moved {
		t.Errorf("moved %d cells in %d reported steps, want at least one step a cell (--page-cells 1, --progress 0):\n%s", moved, steps, out.String())
	}
}

// `tq unit` refuses a flag its verb does not use, naming the flag and the
// verb, before it dials anything: --tolerance with drain, --cancel and
// --wait with rebalance were accepted and dropped.
func TestUnitRefusesFlagsItsVerbDoesNotUse(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	const addr = "unix:///nonexistent/controller.sock"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"drain", "--tolerance", "0.2", "2"}, "unit drain: --tolerance is for rebalance"},
		{[]string{"rebalance", "--cancel"}, "unit rebalance: --cancel is for drain"},
		{[]string{"rebalance", "--wait"}, "unit rebalance: --wait is for drain"},
		{[]string{"undrain", "--page-cells", "10", "2"}, "unit undrain: --page-cells is for drain or rebalance"},
		{[]string{"undrain", "--wait", "2"}, "unit undrain: --wait is for drain"},
		{[]string{"drain", "--cancel", "--wait", "2"}, "unit drain --cancel: --wait is for drain"},
		{[]string{"drain", "--cancel", "--progress", "1s", "2"}, "unit drain --cancel: --progress is for drain or rebalance"},
		{[]string{"rebalance", "--page-cells", "-1"}, "unit rebalance: --page-cells -1: want 0 or more"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			err := run(t.Context(), append([]string{"unit", "--controller", addr}, tc.args...), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("tq unit %s: got %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}
}
