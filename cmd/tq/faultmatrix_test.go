package main

// The fault matrix: a cluster of real processes — a durable controller,
// two storage units, two writers and two consumers (faultroles_test.go) —
// while a seeded driver SIGKILLs and restarts each of them at random
// points of their puts, gets, clears, fetches and checkpoints. Then it
// stops, lets the cluster settle, and checks what must hold:
//
//   - every key reads back, bit-exact, a state its writer's journal allows
//     (its last acknowledged operation or one attempted after it), or
//     fails with ErrLost where the unit that held it is dead; never
//     other bytes, never ErrLost from a live unit;
//   - after reconciliation no live unit holds an extent that no cell
//     references (nor a reservation or lease of a dead client);
//   - each stream row reached the task at most once, and exactly once
//     when no consumer was killed (even seeds kill none);
//   - every checkpoint reported saved is listed, and the newest loads
//     into a fresh cluster that serves only bytes that were put;
//   - the servers (built with the race detector when the test is)
//     report no data race.
//
// make test runs two short seeds; make soak runs seeds for as long as
// -faults.soak says.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
	"github.com/tqgo/tq/transport/tcp"
)

var (
	faultsSeeds    = flag.String("faults.seeds", "1,2", "TestFaultMatrix: the seeds to run, comma-separated")
	faultsDuration = flag.Duration("faults.duration", 5*time.Second, "TestFaultMatrix: how long each seed injects faults")
	faultsSoak     = flag.Duration("faults.soak", 0, "TestFaultMatrix: when set, run seeds from the first of -faults.seeds on until this much time has passed")
)

// asTQ, set in its environment, makes this test binary tq: TestMain runs
// main instead of the tests.
const asTQ = "TQ_TEST_AS_TQ"

// buildTQRace builds tq with the race detector when this test binary has
// it (the fault matrix wants the servers' races too). A test binary with
// the race detector and the invariants is that tq already (package main,
// with the same tags): then it is a script that runs this binary as tq,
// which spares a build of tens of seconds under make test.
var buildTQRace = sync.OnceValues(func() (string, error) {
	if !raceEnabled {
		return buildTQ()
	}
	dir, err := binDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "tq-race")
	if invariants.Enabled {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		script := fmt.Sprintf("#!/bin/sh\nexport %s=1\nexec '%s' \"$@\"\n", asTQ, strings.ReplaceAll(exe, "'", `'\''`))
		return bin, os.WriteFile(bin, []byte(script), 0o755)
	}
	tags := "invariants"
	if rdma.Supported {
		tags += " rdma"
	}
	out, err := exec.Command("go", "build", "-race", "-tags", tags, "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build -race: %v\n%s", err, out)
	}
	return bin, nil
})

func TestFaultMatrix(t *testing.T) {
	tqBinary(t) // skips in -short mode
	bin, err := buildTQRace()
	if err != nil {
		t.Fatal(err)
	}
	var seeds []uint64
	for _, s := range strings.Split(*faultsSeeds, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			t.Fatalf("-faults.seeds %q: %v", *faultsSeeds, err)
		}
		seeds = append(seeds, n)
	}
	start := time.Now()
	var total fmTotals
	for i := 0; ; i++ {
		seed := seeds[0] + uint64(i) // -faults.soak: one after another
		if *faultsSoak == 0 {
			if i == len(seeds) {
				break
			}
			seed = seeds[i]
		} else if i > 0 && time.Since(start) > *faultsSoak {
			break
		}
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			total.add(runFaultMatrix(t, bin, seed, *faultsDuration))
		})
		if t.Failed() {
			break
		}
	}
	t.Logf("fault matrix: %d seeds, %d faults (%s), %d operations acknowledged, %d reads checked, %d stream rows delivered, %d violations, %v",
		total.seeds, total.faults(), total.kinds(), total.acks, total.reads, total.delivered, total.violations, time.Since(start).Round(time.Second))
}

type fmTotals struct {
	seeds, acks, reads, delivered, violations int
	byKind                                    map[string]int
}

func (t *fmTotals) add(o fmTotals) {
	t.seeds += o.seeds
	t.acks += o.acks
	t.reads += o.reads
	t.delivered += o.delivered
	t.violations += o.violations
	if t.byKind == nil {
		t.byKind = map[string]int{}
	}
	for k, n := range o.byKind {
		t.byKind[k] += n
	}
}

func (t *fmTotals) faults() (n int) {
	for _, v := range t.byKind {
		n += v
	}
	return n
}

func (t *fmTotals) kinds() string {
	var s []string
	for _, k := range slices.Sorted(maps.Keys(t.byKind)) {
		s = append(s, fmt.Sprintf("%s %d", k, t.byKind[k]))
	}
	return strings.Join(s, ", ")
}

// fmCluster is the running cluster and what the driver knows of it.
type fmCluster struct {
	t                *testing.T
	bin, dir         string
	data, socks      string
	rng              *rand.Rand
	seed             uint64
	ctrl             *serveProc
	units            [2]*serveProc
	writers          []*fmProc
	consumers        []*fmProc
	token            string
	faults           map[string]int
	consumerKilled   bool
	violations       []string
	checkpoints      []chan struct{}             // closed when each save has ended
	unitIDs          [2]engine.UnitID            // of the unit each slot runs
	killed           map[engine.UnitID]time.Time // when each unit was killed
	savedCheckpoints []string
	mu               sync.Mutex // guards savedCheckpoints
}

// fmProc is a client process of the fault matrix.
type fmProc struct {
	role string
	id   int
	log  string // its journal
	cmd  *exec.Cmd
	done chan error
}

func (c *fmCluster) addr() string { return "unix://" + filepath.Join(c.socks, "controller.sock") }

func (c *fmCluster) violate(format string, args ...any) {
	c.violations = append(c.violations, fmt.Sprintf(format, args...))
}

// logFile opens (appending) the file the processes of one slot write to.
func (c *fmCluster) logFile(name string) *os.File {
	f, err := os.OpenFile(filepath.Join(c.dir, name), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { f.Close() })
	return f
}

func (c *fmCluster) serve(name string, args ...string) (*serveProc, error) {
	f := c.logFile(name + ".log")
	p, err := spawnServe(c.data, nil, f, func(l string) { f.WriteString(l + "\n") }, c.bin, args...)
	if err == nil {
		c.t.Cleanup(p.kill)
	}
	return p, err
}

func (c *fmCluster) startController() {
	c.t.Helper()
	var err error
	for try := 0; ; try++ {
		c.ctrl, err = c.serve("controller", "--role", "controller", "--listen", "", "--socket-dir", c.socks, "--heartbeat", "100ms")
		if err == nil {
			return
		}
		if try == 3 {
			c.t.Fatalf("controller does not start: %v (see %s)", err, filepath.Join(c.dir, "controller.log"))
		}
	}
}

func (c *fmCluster) startUnit(i int) {
	c.t.Helper()
	var err error
	for try := 0; ; try++ {
		args := []string{"--role", "unit", "--controller", c.addr(), "--unit-listen", "",
			"--socket-dir", c.socks, "--capacity", "64MiB",
			"--reconcile-interval", "500ms", "--reconcile-grace", "2s", "--name", fmt.Sprintf("u%d", i)}
		if rdma.Supported { // consumer 1 reads over RDMA (the emulated device)
			// RDMA's control requests go over the unit's TCP connection.
			args = append(args, "--rdma-device", "emu0")
			args[slices.Index(args, "--unit-listen")+1] = "127.0.0.1:0"
		}
		c.units[i], err = c.serve(fmt.Sprintf("unit%d", i), args...)
		if err == nil {
			c.unitIDs[i] = 0
			for _, a := range c.units[i].units[0] {
				if m := unitSock.FindStringSubmatch(a); m != nil {
					n, _ := strconv.Atoi(m[1])
					c.unitIDs[i] = engine.UnitID(n)
				}
			}
			if c.unitIDs[i] == 0 {
				c.t.Fatalf("unit %d's id is not in its addresses %v", i, c.units[i].units[0])
			}
			return
		}
		if try == 3 {
			c.t.Fatalf("unit %d does not start: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// unitSock finds a unit's id in its socket's name.
var unitSock = regexp.MustCompile(`/unit-(\d+)\.sock$`)

// killUnit SIGKILLs the unit of slot i, noting when (before the signal:
// a read that failed earlier failed while it lived).
func (c *fmCluster) killUnit(i int) {
	c.killed[c.unitIDs[i]] = time.Now()
	c.units[i].kill()
}

func (c *fmCluster) startClient(p *fmProc) {
	c.t.Helper()
	out := c.logFile(fmt.Sprintf("%s%d.log", p.role, p.id))
	cmd := exec.Command(os.Args[0])
	transport := ""
	if p.role == "writer" && p.id == 1 {
		transport = "tcp" // its unit sockets, not shared memory
	}
	if p.role == "consumer" && p.id == 1 && rdma.Supported {
		transport = "rdma" // one-sided reads through the emulated device
	}
	cmd.Env = append(os.Environ(), "TQ_FM_ROLE="+p.role, fmt.Sprintf("FM_ID=%d", p.id), "FM_LOG="+p.log, "FM_ADDR="+c.addr(),
		"TQ_TOKEN="+c.token, fmt.Sprintf("FM_SEED=%d", c.seed), "FM_TRANSPORT="+transport)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p.cmd, p.done = cmd, make(chan error, 1)
	go func() { p.done <- cmd.Wait() }()
	c.t.Cleanup(func() { p.kill() })
}

func (p *fmProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// term stops p with SIGTERM: it finishes the operation under way.
func (p *fmProc) term(timeout time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s %d still running %v after SIGTERM", p.role, p.id, timeout)
	}
}

func runFaultMatrix(t *testing.T, bin string, seed uint64, dur time.Duration) fmTotals {
	dir := t.TempDir()
	c := &fmCluster{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), socks: filepath.Join(dir, "socks"),
		rng: rand.New(rand.NewPCG(seed, 0x7a17)), seed: seed, faults: map[string]int{}, killed: map[engine.UnitID]time.Time{}}
	for _, d := range []string{c.data, c.socks} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		if t.Failed() {
			keep := filepath.Join(os.TempDir(), fmt.Sprintf("tq-faults-seed-%d", seed))
			os.RemoveAll(keep)
			if err := exec.Command("cp", "-a", dir, keep).Run(); err == nil {
				t.Logf("journals and logs kept in %s", keep)
			}
		}
	}()
	c.startController()
	c.token = c.ctrl.token(t)
	c.startUnit(0)
	c.startUnit(1)
	for i := range 2 {
		c.writers = append(c.writers, &fmProc{role: "writer", id: i, log: filepath.Join(dir, fmt.Sprintf("writer%d.journal", i))})
		c.consumers = append(c.consumers, &fmProc{role: "consumer", id: i, log: filepath.Join(dir, fmt.Sprintf("consumer%d.journal", i))})
	}
	for _, p := range append(slices.Clone(c.writers), c.consumers...) {
		c.startClient(p)
	}

	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(150+c.rng.IntN(450)) * time.Millisecond)
		c.fault()
	}
	return c.settleAndCheck()
}

func (c *fmCluster) pause() { time.Sleep(time.Duration(c.rng.IntN(400)) * time.Millisecond) }

// fault injects one fault and brings back what it killed.
func (c *fmCluster) fault() {
	switch p := c.rng.IntN(100); {
	case p < 18:
		c.faults["controller SIGKILL"]++
		c.ctrl.kill()
		c.pause()
		c.startController()
	case p < 23:
		c.faults["controller SIGTERM"]++
		c.ctrl.stop(c.t)
		c.startController()
	case p < 40:
		i := c.rng.IntN(2)
		c.faults["unit SIGKILL"]++
		c.killUnit(i)
		c.pause()
		c.startUnit(i)
	case p < 45:
		// A unit and the controller at once: the controller comes back to
		// a unit that is gone.
		i := c.rng.IntN(2)
		c.faults["unit and controller SIGKILL"]++
		c.killUnit(i)
		c.ctrl.kill()
		c.startController()
		c.pause()
		c.startUnit(i)
	case p < 65 || p < 78 && c.seed%2 == 0:
		w := c.writers[c.rng.IntN(len(c.writers))]
		c.faults["writer SIGKILL"]++
		w.kill()
		c.pause()
		c.startClient(w)
	case p < 78:
		// Odd seeds kill consumers (then each row arrives at most once),
		// even seeds do not (then exactly once).
		w := c.consumers[c.rng.IntN(len(c.consumers))]
		c.faults["consumer SIGKILL"]++
		c.consumerKilled = true
		w.kill()
		c.pause()
		c.startClient(w)
	default:
		c.checkpoint()
	}
}

// checkpoint runs `tq checkpoint save` in the background; half the time
// the controller is killed while it runs.
func (c *fmCluster) checkpoint() {
	name := fmt.Sprintf("ck%d", len(c.checkpoints))
	cmd := exec.Command(c.bin, "checkpoint", "save", c.addr(), name)
	cmd.Env = append(os.Environ(), "TQ_TOKEN="+c.token)
	out := c.logFile("checkpoint.log")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	c.checkpoints = append(c.checkpoints, done)
	go func() {
		if cmd.Wait() == nil {
			c.mu.Lock()
			c.savedCheckpoints = append(c.savedCheckpoints, name)
			c.mu.Unlock()
		}
		close(done)
	}()
	c.faults["checkpoint save"]++
	if c.rng.IntN(2) == 0 {
		time.Sleep(time.Duration(c.rng.IntN(60)) * time.Millisecond)
		c.faults["controller SIGKILL in a checkpoint"]++
		c.ctrl.kill()
		c.pause()
		c.startController()
	}
	c.t.Cleanup(func() { cmd.Process.Kill(); <-done })
}

// progress waits until every process of ps has journaled more than it had
// (acknowledgements for writers, fetched rows for consumers).
func (c *fmCluster) progress(ps []*fmProc, timeout time.Duration) {
	count := func(p *fmProc) int {
		j, err := parseFMJournal(p.log)
		if err != nil {
			c.t.Fatal(err)
		}
		if p.role == "writer" {
			return j.acks
		}
		return len(j.fetched)
	}
	before := make([]int, len(ps))
	for i, p := range ps {
		before[i] = count(p)
	}
	deadline := time.Now().Add(timeout)
	for i, p := range ps {
		for count(p) == before[i] {
			if time.Now().After(deadline) {
				c.violate("%s %d made no progress in %v after the faults stopped (see %s%d.log)", p.role, p.id, timeout, p.role, p.id)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (c *fmCluster) settleAndCheck() fmTotals {
	t := c.t
	for _, done := range c.checkpoints {
		<-done
	}
	// Everything that was killed is back; the clients must get going
	// again on their own.
	c.progress(c.writers, 30*time.Second)
	c.progress(c.consumers, 30*time.Second)
	for _, p := range append(slices.Clone(c.writers), c.consumers...) {
		if err := p.term(30 * time.Second); err != nil {
			c.violate("%s %d after SIGTERM: %v", p.role, p.id, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := client.Connect(ctx, c.addr(), client.ConnectConfig{Token: c.token, WaitForUnits: true, Name: "fm-driver"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	meta, err := client.DialMeta(ctx, c.addr(), client.RemoteConfig{Token: c.token})
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	// Units killed lately are reported dead once they miss their
	// heartbeats: then the two running units are the live ones.
	alive := map[engine.UnitID]bool{}
	for deadline := time.Now().Add(20 * time.Second); ; {
		units, err := meta.Units(ctx)
		if err != nil {
			t.Fatal(err)
		}
		clear(alive)
		n := 0
		for _, u := range units {
			if alive[u.ID] = u.Alive; u.Alive {
				n++
			}
		}
		if n == len(c.units) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d units alive, %d running", n, len(c.units))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// ErrLost is right only for a unit that was killed before the read
	// failed (ids are never reused, so a killed unit stays dead).
	lostOK := func(what string, unit engine.UnitID, at time.Time) {
		killed, ok := c.killed[unit]
		switch {
		case unit == engine.LostUnit:
			c.violate("%s: its cell was marked lost by reconciliation while its unit lived", what)
		case unit == 0:
			c.violate("%s: ErrLost, and the cell's unit is not known", what)
		case alive[unit]:
			c.violate("%s: ErrLost, but unit %d that holds it is alive", what, unit)
		case !ok:
			c.violate("%s: ErrLost from unit %d, which was never killed", what, unit)
		case at.Before(killed):
			c.violate("%s: ErrLost from unit %d at %v, %v before it was killed", what, unit, at.Format(time.StampMicro), killed.Sub(at))
		}
	}

	// report takes checkStreamRows's lines for the driver's own reads.
	report := func(what string) func(...string) {
		return func(lines ...string) {
			for _, l := range lines {
				switch kind, rest, _ := strings.Cut(l, " "); kind {
				case "V", "E":
					c.violate("%s: %s", what, rest)
				case "L":
					l := parseLost(strings.Fields(rest))
					lostOK(what+": stream row "+rest, l.unit, l.at)
				}
			}
		}
	}
	// Drain the stream: what is left goes to the driver.
	var drained []string
	for {
		m, err := cl.GetMeta(ctx, client.MetaRequest{Partition: fmStreamPart, Task: fmTask, BatchSize: 1, Fields: []string{"v"}})
		if errors.Is(err, engine.ErrNotFound) && len(drained) == 0 {
			break // no stream partition at all
		}
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
		if len(m.Indexes) == 0 {
			break
		}
		keys, err := cl.KeysOf(ctx, fmStreamPart, m.Indexes)
		if err != nil {
			t.Fatal(err)
		}
		drained = append(drained, keys...)
		checkStreamRows(ctx, cl, keys, m, report("drain"))
	}
	// Every stream row still held, fetched or not, reads back its own
	// bytes (or is lost with its unit): reconciliation freed no extent a
	// cell references.
	var streamRows int
	if m, err := meta.ForceFetch(ctx, fmStreamPart, []string{"v"}); err == nil && len(m.Indexes) > 0 {
		keys, err := cl.KeysOf(ctx, fmStreamPart, m.Indexes)
		if err != nil {
			t.Fatal(err)
		}
		streamRows = len(keys)
		checkStreamRows(ctx, cl, keys, m, report("final read"))
	} else if err != nil && !errors.Is(err, engine.ErrNotFound) {
		t.Fatal(err)
	}

	// The journals.
	writers := newFMJournal()
	streamP, streamA := map[string]bool{}, map[string]bool{}
	fetched := map[string]int{}
	var tot fmTotals
	for _, p := range append(slices.Clone(c.writers), c.consumers...) {
		j, err := parseFMJournal(p.log)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range j.violations {
			c.violate("%s %d: %s", p.role, p.id, v)
		}
		for _, l := range j.lost {
			lostOK(fmt.Sprintf("%s %d read %s (%s)", p.role, p.id, l.key, l.err), l.unit, l.at)
		}
		maps.Copy(writers.keys, j.keys)
		maps.Copy(streamP, j.streamP)
		maps.Copy(streamA, j.streamA)
		for _, k := range j.fetched {
			fetched[k]++
		}
		tot.acks += j.acks
		tot.reads += j.reads
	}
	tot.reads += streamRows
	for _, k := range drained {
		fetched[k]++
	}

	// Every key of every writer.
	kv := kvapi.New(cl)
	for w := range c.writers {
		for i := range fmKeys {
			key := fmKey(w, i)
			h := writers.hist(key)
			b, err := kv.BatchGetCopy(ctx, fmKVPart, []string{key}, "v")
			tot.reads++
			switch {
			case err == nil:
				got := b.Col("v").RowBytes(0)
				gw, gk, ver, ok := fmWhose(got)
				if !ok || gw != w || gk != key || !h.accepts(ver, false) {
					c.violate("%s reads %s, want %s", key, fmDescribe(got), h.want())
				}
			case errors.Is(err, engine.ErrNotFound):
				if !h.accepts(0, true) {
					c.violate("%s is not found, want %s", key, h.want())
				}
			case errors.Is(err, engine.ErrLost):
				lostOK(fmt.Sprintf("read of %s (%v)", key, err), cellUnit(ctx, cl, fmKVPart, key), time.Now())
			default:
				c.violate("read of %s after the faults: %v", key, err)
			}
		}
	}
	list, err := kv.List(ctx, fmKVPart)
	if err != nil && !errors.Is(err, engine.ErrNotFound) {
		t.Fatal(err)
	}
	for _, e := range list[fmKVPart] {
		if _, ok := writers.keys[e.Key]; !ok {
			c.violate("key %s is listed but no writer attempted it", e.Key)
		}
	}

	// Each stream row at most once (exactly once with no consumer killed),
	// and only rows that were put.
	for k, n := range fetched {
		if n > 1 {
			c.violate("stream row %s delivered %d times", k, n)
		}
		if !streamP[k] {
			c.violate("stream row %s delivered but never put", k)
		}
	}
	for k := range streamA {
		if fetched[k] == 0 && !c.consumerKilled {
			c.violate("stream row %s acknowledged but never delivered", k)
		}
	}
	tot.delivered = len(fetched)

	c.checkExtents(ctx, meta)
	c.checkCheckpoints(ctx, writers)
	// Every process ran with the race detector when this test does: the
	// servers and the clients (this binary) print what it finds as it
	// finds it.
	logs, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, name := range logs {
		b, _ := os.ReadFile(name)
		if n := strings.Count(string(b), "WARNING: DATA RACE"); n > 0 {
			c.violate("%s reports %d data races", filepath.Base(name), n)
		}
	}

	tot.seeds, tot.violations, tot.byKind = 1, len(c.violations), c.faults
	t.Logf("seed %d: faults %v; %d acknowledged, %d reads checked, %d stream rows delivered (%d put, %d acknowledged), %d checkpoints saved; %d violations",
		c.seed, c.faults, tot.acks, tot.reads, len(fetched), len(streamP), len(streamA), len(c.savedCheckpoints), len(c.violations))
	if len(c.violations) > 0 {
		// All of them, beside the journals and logs kept for a failed seed.
		os.WriteFile(filepath.Join(c.dir, "violations.txt"), []byte(strings.Join(c.violations, "\n")+"\n"), 0o600)
	}
	for i, v := range c.violations {
		if i == 40 {
			t.Errorf("... and %d more", len(c.violations)-i)
			break
		}
		t.Errorf("violation: %s", v)
	}
	return tot
}

// checkExtents waits for reconciliation to free every extent no cell
// references, on every live unit, and for the reservations and leases of
// dead clients to be gone.
func (c *fmCluster) checkExtents(ctx context.Context, meta *client.RemoteMeta) {
	units, err := meta.Units(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	tr := tcp.New(tcp.Config{Token: c.token})
	defer tr.Close()
	conns := map[engine.UnitID]*tcp.Conn{}
	for _, u := range units {
		if !u.Alive {
			continue
		}
		for _, a := range u.Addrs {
			if strings.HasPrefix(a, "unix://") {
				dc, err := tr.DialConn(ctx, engine.PeerInfo{Addr: a, Unit: u.ID, Incarnation: u.Incarnation})
				if err != nil {
					c.t.Fatal(err)
				}
				conns[u.ID] = dc
			}
		}
	}
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for {
		type ext struct {
			unit     engine.UnitID
			seg, gen uint32
		}
		refs := map[engine.UnitID]map[ext]bool{}
		lostCells := 0
		for _, part := range []string{fmKVPart, fmStreamPart} {
			m, err := meta.ForceFetch(ctx, part, []string{"v"})
			if errors.Is(err, engine.ErrNotFound) {
				continue
			}
			if err != nil {
				c.t.Fatal(err)
			}
			for _, l := range m.Cells["v"] {
				if l.Lost() {
					lostCells++
				}
				if !l.Stored() || l.Lost() {
					continue
				}
				if refs[l.Unit] == nil {
					refs[l.Unit] = map[ext]bool{}
				}
				refs[l.Unit][ext{l.Unit, l.Addr.Segment, l.Addr.Gen}] = true
			}
		}
		var diffs []string
		if lostCells > 0 {
			diffs = append(diffs, fmt.Sprintf("%d cells marked lost by reconciliation", lostCells))
		}
		for _, id := range slices.Sorted(maps.Keys(conns)) {
			st, err := conns[id].Stats(ctx)
			if err != nil {
				c.t.Fatal(err)
			}
			if int(st.Extents) != len(refs[id]) || st.OpenReservations != 0 || st.Leases != 0 {
				diffs = append(diffs, fmt.Sprintf("unit %d holds %d extents (%d referenced), %d open reservations, %d leases",
					id, st.Extents, len(refs[id]), st.OpenReservations, st.Leases))
			}
		}
		if len(diffs) == 0 {
			return
		}
		last = strings.Join(diffs, "; ")
		if time.Now().After(deadline) {
			c.violate("after reconciliation: %s", last)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkCheckpoints: every checkpoint reported saved is listed, and the
// newest loads into a fresh cluster that serves only bytes some writer
// put under the key read (or ErrLost for cells whose unit was dead when
// it was saved).
func (c *fmCluster) checkCheckpoints(ctx context.Context, writers *fmJournal) {
	t := c.t
	cmd := exec.Command(c.bin, "checkpoint", "list", c.addr())
	cmd.Env = append(os.Environ(), "TQ_TOKEN="+c.token)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.violate("tq checkpoint list: %v\n%s", err, out)
		return
	}
	c.mu.Lock()
	saved := slices.Clone(c.savedCheckpoints)
	c.mu.Unlock()
	for _, name := range saved {
		if !strings.Contains(string(out), name+" ") && !strings.Contains(string(out), name+"\t") && !strings.Contains(string(out), name+"\n") {
			c.violate("checkpoint %s was reported saved but is not listed:\n%s", name, out)
		}
	}
	if len(saved) == 0 {
		return
	}
	newest := saved[len(saved)-1]
	fresh := filepath.Join(c.dir, "fresh")
	if err := os.MkdirAll(filepath.Join(fresh, "checkpoints"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cp", "-a", filepath.Join(c.data, "checkpoints", newest), filepath.Join(fresh, "checkpoints", newest)).Run(); err != nil {
		t.Fatal(err)
	}
	socks := filepath.Join(c.dir, "fresh-socks")
	os.Mkdir(socks, 0o700)
	f := c.logFile("fresh.log")
	p, err := spawnServe(fresh, nil, f, func(l string) { f.WriteString(l + "\n") }, c.bin,
		"--listen", "", "--socket-dir", socks, "--units", "2", "--capacity", "64MiB", "--restore", newest)
	if err != nil {
		c.violate("tq serve --restore %s: %v", newest, err)
		return
	}
	defer p.kill()
	cl, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true, Name: "fm-restore"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	kv := kvapi.New(cl)
	for _, part := range []string{fmKVPart, fmStreamPart} {
		list, err := kv.List(ctx, part)
		if errors.Is(err, engine.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list[part] {
			b, err := kv.BatchGetCopy(ctx, part, []string{e.Key}, "v")
			switch {
			case err == nil:
				got := b.Col("v").RowBytes(0)
				_, k, ver, ok := fmWhose(got)
				attempted := part == fmStreamPart && ver == 0
				if h := writers.keys[e.Key]; h != nil {
					attempted = slices.ContainsFunc(h.ops, func(op fmOp) bool { return !op.clear && op.ver == ver })
				}
				if !ok || k != e.Key || !attempted {
					c.violate("checkpoint %s: %s/%s reads %s", newest, part, e.Key, fmDescribe(got))
				}
			case errors.Is(err, engine.ErrLost):
			default:
				c.violate("checkpoint %s: read %s/%s: %v", newest, part, e.Key, err)
			}
		}
	}
}
