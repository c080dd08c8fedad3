package main

// tq demo --stream: the streaming loader with every party its own
// process on this host. The demo process starts `tq serve` (a controller
// and a storage unit, in a temporary data directory), a producer process
// that writes a partition of prompts with their token counts and marks it
// done, and a trainer of 2 data-parallel groups × 2 ranks: four processes,
// each iterating over its micro-batches with stream.Loader and the
// seqlen-balanced sampler. The demo prints what each process prints, then
// checks that the ranks of a group saw identical micro-batches and that
// every row reached exactly one group.
//
// The workers are this binary again: `tq demo --stream-role producer|rank`
// with the controller's address and the data directory (where the token
// is) in their environment.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/stream"
)

const (
	demoAddrEnv = "TQ_DEMO_ADDR"
	demoRankEnv = "TQ_DEMO_RANK"
	demoRows    = 64
	demoGroups  = 2
	demoPerDP   = 2 // ranks per data-parallel group
	demoMicro   = 4
)

// demoLength is row i's token count.
func demoLength(i int) int { return 16 + (i*37)%97 }

// demoStreamDir makes the demo's temporary directory, whose sock/ holds
// tq serve's sockets (--socket-dir): under $TMPDIR, else under /tmp when
// $TMPDIR's would make a socket's path longer than a unix socket allows
// (tq serve would refuse a --socket-dir the user never gave).
func demoStreamDir() (string, error) {
	const pattern = "tq-demo-stream-"
	// The longest socket path in it, as checkSocketPaths counts it; the
	// directory's random suffix is at most 10 digits.
	longest := func(parent string) int {
		return len(filepath.Join(parent, pattern+"0123456789", "sock", fmt.Sprintf("unit-%d.sock.shm", controller.MaxUnits)))
	}
	parent := os.TempDir()
	if longest(parent) > maxSocketPath {
		if longest("/tmp") > maxSocketPath {
			return "", fmt.Errorf("demo --stream: no directory for tq serve's sockets: under $TMPDIR (%s) a socket's path would pass the %d bytes a unix socket allows", parent, maxSocketPath)
		}
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return "", fmt.Errorf("demo --stream: make its temporary directory: %w", err)
	}
	return dir, nil
}

// demoStream runs the orchestrating process.
func demoStream(ctx context.Context, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	dir, err := demoStreamDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	env := append(os.Environ(), auth.EnvDataDir+"="+dir+"/data")

	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// Output that nobody reads any more (`tq demo --stream | head -1`)
	// ends the demo as an error: tq serve stopped, the directory removed.
	// Without this the write would end this process at once with SIGPIPE
	// and leave tq serve running for good.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	outw := &demoOut{w: stdout, cancel: cancel}
	stdout = outw
	out := &printer{w: stdout}
	var mu sync.Mutex // one line at a time
	say := func(who, line string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, "  %-9s %s\n", who+":", line)
	}

	srv := exec.CommandContext(ctx, exe, "serve", "--listen", "", "--socket-dir", dir+"/sock", "--units", "1",
		"--capacity", "64MiB", "--in-memory")
	srv.Env, srv.Stderr = env, stderr
	// Should this process die all the same (SIGKILL), tq serve goes too.
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	srvOut, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("start tq serve: %w", err)
	}
	defer func() {
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
	}()
	addr, err := serveAddr(srvOut)
	if err != nil {
		return err
	}
	out.title("TQ demo --stream: tq serve (pid %d) on %s; a producer and %d trainer ranks (%d DP groups × %d), each its own process",
		srv.Process.Pid, addr, demoGroups*demoPerDP, demoGroups, demoPerDP)

	env = append(env, demoAddrEnv+"="+addr)
	type worker struct {
		name  string
		rank  int
		lines []string
	}
	workers := []*worker{{name: "producer", rank: -1}}
	for r := range demoGroups * demoPerDP {
		workers = append(workers, &worker{name: fmt.Sprintf("rank %d", r), rank: r})
	}
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		role := "rank"
		if w.rank < 0 {
			role = "producer"
		}
		cmd := exec.CommandContext(ctx, exe, "demo", "--stream-role", role)
		cmd.Env, cmd.Stderr = append(slices.Clone(env), fmt.Sprintf("%s=%d", demoRankEnv, w.rank)), stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", w.name, err)
		}
		wg.Go(func() {
			sc := bufio.NewScanner(pipe)
			for sc.Scan() {
				w.lines = append(w.lines, sc.Text())
				say(fmt.Sprintf("%s[%d]", strings.ReplaceAll(w.name, " ", ""), cmd.Process.Pid), sc.Text())
			}
			if err := cmd.Wait(); err != nil {
				errs[i] = fmt.Errorf("%s: %w", w.name, err)
			}
		})
	}
	wg.Wait()
	if err := outw.failed(); err != nil {
		return err // the workers' errors are of their being stopped
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	// Check what the ranks saw.
	batches := func(w *worker) []string {
		var bs []string
		for _, l := range w.lines {
			if _, rows, ok := strings.Cut(l, "rows "); ok {
				bs = append(bs, rows)
			}
		}
		return bs
	}
	var all []int
	for g := range demoGroups {
		a, b := workers[1+g*demoPerDP], workers[2+g*demoPerDP]
		if !slices.Equal(batches(a), batches(b)) {
			return fmt.Errorf("%s and %s (DP group %d) saw different micro-batches", a.name, b.name, g)
		}
		for _, bs := range batches(a) {
			rows, _, _ := strings.Cut(bs, " ")
			for _, s := range strings.Split(strings.Trim(rows, "[]"), ",") {
				v, err := strconv.Atoi(s)
				if err != nil {
					return fmt.Errorf("bad row %q in %q", s, bs)
				}
				all = append(all, v)
			}
		}
	}
	slices.Sort(all)
	for i, v := range all {
		if v != i || len(all) != demoRows {
			return fmt.Errorf("the groups saw rows %v, want each of 0..%d exactly once", all, demoRows-1)
		}
	}
	out.step("ok: the ranks of each DP group saw identical micro-batches, and each of the %d rows reached exactly one group", demoRows)
	return outw.failed()
}

// demoOut is the demo's stdout: its first failed write (the reader went
// away) cancels the demo, and failed says so.
type demoOut struct {
	w      io.Writer
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error
}

func (o *demoOut) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(b)
	if err != nil {
		o.err = err
		o.cancel()
	}
	return n, err
}

func (o *demoOut) failed() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return fmt.Errorf("demo --stream: stopped: stdout cannot be written (closed by its reader?): %w", o.err)
	}
	return nil
}

// serveAddr reads tq serve's output until it is ready and returns the
// controller's unix address; it keeps draining the output.
func serveAddr(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	addr := ""
	for sc.Scan() {
		l := sc.Text()
		if rest, ok := strings.CutPrefix(l, "tq serve: controller on "); ok {
			for _, a := range strings.Fields(rest) {
				if strings.HasPrefix(a, "unix://") {
					addr = a
				}
			}
		}
		if l == "tq serve: ready" {
			go io.Copy(io.Discard, r)
			if addr == "" {
				return "", errors.New("tq serve printed no unix address")
			}
			return addr, nil
		}
	}
	return "", errors.New("tq serve exited before it was ready")
}

// demoWorker is a producer or a trainer rank of tq demo --stream.
func demoWorker(ctx context.Context, role string, stdout io.Writer) error {
	// What the worker is and where tq demo --stream's tq serve is, before
	// any dial (which would say only that the address is empty).
	if role != "producer" && role != "rank" {
		return fmt.Errorf("demo: --stream-role %q: want producer or rank (a worker of tq demo --stream, which starts them)", role)
	}
	addr := os.Getenv(demoAddrEnv)
	if addr == "" {
		return fmt.Errorf("demo: --stream-role %s: $%s is not set: the workers are started by tq demo --stream, which sets it", role, demoAddrEnv)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, addr, client.ConnectConfig{WaitForUnits: true, Name: "demo-" + role})
	if err != nil {
		return err
	}
	defer c.Close()
	const part = "rollouts"
	switch role {
	case "producer":
		for lo := 0; lo < demoRows; lo += 16 {
			ids := make([]int64, 16)
			tags := make([]engine.Tags, 16)
			tokens := 0
			for i := range ids {
				ids[i] = int64(lo + i)
				tags[i] = engine.Tags{"total_lengths": demoLength(lo + i)}
				tokens += demoLength(lo + i)
			}
			col, err := engine.DenseOf(ids, 1)
			if err != nil {
				return err
			}
			m, err := c.PutNew(ctx, part, engine.MustBatch(engine.Field{Name: "sample_id", Col: col}))
			if err != nil {
				return err
			}
			if err := m.MergeTags(tags); err != nil {
				return err
			}
			if err := c.SetTags(ctx, m); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote rows %d..%d (%d tokens)\n", lo, lo+15, tokens)
			time.Sleep(30 * time.Millisecond)
		}
		if err := c.MarkDone(ctx, part); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "marked %q done\n", part)
		return nil
	case "rank":
		rank, err := strconv.Atoi(os.Getenv(demoRankEnv))
		if err != nil {
			return fmt.Errorf("%s: %w", demoRankEnv, err)
		}
		cfg := stream.DefaultConfig()
		cfg.Partitions, cfg.Task, cfg.Fields, cfg.MicroBatchSize = []string{part}, "actor", []string{"sample_id"}, demoMicro
		cfg.DPRank, cfg.DPSize = rank/demoPerDP, demoGroups
		cfg.Sampler = engine.SamplerSpec{Name: engine.SamplerSeqlenBalanced}
		l, err := stream.New(c, cfg)
		if err != nil {
			return err
		}
		n, tokens := 0, 0
		for b, err := range l.All(ctx) {
			if err != nil {
				return err
			}
			ids, err := engine.Values[int64](b.Data.Col("sample_id"))
			if err != nil {
				return err
			}
			strs, t := make([]string, len(ids)), 0
			for i, id := range ids {
				strs[i] = strconv.FormatInt(id, 10)
				t += demoLength(int(id))
			}
			fmt.Fprintf(stdout, "DP group %d micro-batch %d: rows [%s] %d tokens\n", cfg.DPRank, b.Index, strings.Join(strs, ","), t)
			n, tokens = n+1, tokens+t
		}
		fmt.Fprintf(stdout, "done: %d micro-batches, %d tokens\n", n, tokens)
	}
	return nil
}
