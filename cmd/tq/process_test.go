package main

// Tests with real OS processes: `tq serve` built from this tree runs as a
// child process; producers and consumers are this test binary re-executed
// as helper processes (TestHelperProcess) that connect through the network
// with client.Connect and the KV and batch APIs.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
	"github.com/tqgo/tq/transport/shm"
	"github.com/tqgo/tq/transport/tcp"
	"github.com/tqgo/tq/wire"
)

// binDir holds the tq binaries the tests build; TestMain removes it (each
// is tens of megabytes, and make test builds them on every run).
var binDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "tq-bin-") })

// removeBinDir removes binDir (making it first when no test did, which
// costs less than keeping track).
func removeBinDir() {
	if dir, err := binDir(); err == nil {
		os.RemoveAll(dir)
	}
}

var buildTQ = sync.OnceValues(func() (string, error) {
	dir, err := binDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "tq")
	args := []string{"build", "-o", bin}
	if rdma.Supported { // this test binary has the RDMA transport: so does tq
		args = append(args, "-tags", "rdma")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func tqBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs processes; skipped in -short mode")
	}
	bin, err := buildTQ()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// serveProc is a running `tq serve`.
type serveProc struct {
	cmd      *exec.Cmd
	lines    chan string
	addrs    []string   // the controller's addresses
	units    [][]string // each storage unit's addresses
	dataDir  string     // its $TQ_DATA_DIR
	resp     string     // its Redis-protocol address (--resp)
	respSock string     // its Redis-protocol unix socket (--resp-socket)
	// metricsURL is its --metrics endpoint, http://HOST:PORT/metrics.
	metricsURL string
	done       chan error
}

// startServe runs `tq serve` with args (optionally under a wrapper such as
// `ip netns exec NS`) in a fresh data directory, and waits for it to print
// "ready".
func startServe(t *testing.T, wrapper []string, bin string, args ...string) *serveProc {
	t.Helper()
	return startServeIn(t, t.TempDir(), wrapper, bin, args...)
}

// startServeIn is startServe with $TQ_DATA_DIR set to dataDir: never the
// real ~/.local/state.
func startServeIn(t *testing.T, dataDir string, wrapper []string, bin string, args ...string) *serveProc {
	t.Helper()
	p, err := spawnServe(dataDir, wrapper, os.Stderr, func(l string) { t.Logf("serve: %s", l) }, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	return p
}

// spawnServe starts `tq serve` with args in dataDir, its stderr to
// stderr, and waits up to 20 s for it to print "ready"; logLine receives
// each line it prints. On error the process is gone.
func spawnServe(dataDir string, wrapper []string, stderr io.Writer, logLine func(string), bin string, args ...string) (*serveProc, error) {
	argv := append(append(append([]string{}, wrapper...), bin, "serve"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+dataDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &serveProc{cmd: cmd, lines: make(chan string, 64), dataDir: dataDir, done: make(chan error, 1)}
	// done reports the exit only once every line printed has gone to
	// logLine: a test that reads what the process said after it exited
	// sees its last lines too.
	logged := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		err := cmd.Wait()
		<-logged
		p.done <- err
	}()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				close(logged)
				p.kill()
				return nil, errors.New("tq serve exited before it was ready")
			}
			logLine(l)
			if rest, ok := strings.CutPrefix(l, "tq serve: controller on "); ok {
				p.addrs = strings.Fields(rest)
			}
			if rest, ok := strings.CutPrefix(l, "tq serve: storage unit "); ok {
				if _, addrs, ok := strings.Cut(rest, ") on "); ok {
					p.units = append(p.units, strings.Fields(addrs))
				}
			}
			if rest, ok := strings.CutPrefix(l, "tq serve: metrics on "); ok {
				p.metricsURL = rest
			}
			if rest, ok := strings.CutPrefix(l, "tq serve: Redis protocol on "); ok {
				if a := strings.Fields(rest)[0]; strings.HasPrefix(a, "unix://") {
					p.respSock = strings.TrimPrefix(a, "unix://")
				} else {
					p.resp = a
				}
			}
			if l == "tq serve: ready" {
				go func() { // keep draining
					for l := range p.lines {
						logLine(l)
					}
					close(logged)
				}()
				return p, nil
			}
		case <-deadline:
			go func() {
				for range p.lines {
				}
				close(logged)
			}()
			p.kill()
			return nil, errors.New("tq serve not ready after 20 s")
		}
	}
}

// serveArgs is defaults, each one "--name=value" (or "--name" for a bool)
// argument, with those that args name too left out, then args: a test
// overrides a helper's default rather than repeating the flag, which tq
// serve refuses. A value in args that looks like a flag (--resp-loops -1)
// names no default.
func serveArgs(defaults []string, args ...string) []string {
	given := map[string]bool{}
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "-"); ok {
			name, _, _ = strings.Cut(strings.TrimPrefix(name, "-"), "=")
			given[name] = true
		}
	}
	var out []string
	for _, d := range defaults {
		name, _, _ := strings.Cut(strings.TrimLeft(d, "-"), "=")
		if !given[name] {
			out = append(out, d)
		}
	}
	return append(out, args...)
}

// kill sends SIGKILL and waits for the process to be gone (at once if it
// already is).
func (p *serveProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

func (p *serveProc) addr(scheme string) string {
	for _, a := range p.addrs {
		if strings.HasPrefix(a, scheme+"://") {
			return a
		}
	}
	return ""
}

// env is what a process needs to find this server's token as any client
// of the same user does: its data directory.
func (p *serveProc) env() []string { return []string{auth.EnvDataDir + "=" + p.dataDir} }

// token returns the token the server made in its data directory.
func (p *serveProc) token(t *testing.T) string {
	t.Helper()
	tok, err := auth.ReadToken(filepath.Join(p.dataDir, auth.TokenFile))
	if err != nil {
		t.Fatalf("the server's token: %v", err)
	}
	return tok
}

// tqStat runs `tq stat` as a client of the same user.
func (p *serveProc) tqStat(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, append([]string{"stat"}, args...)...)
	cmd.Env = append(os.Environ(), p.env()...)
	return cmd.CombinedOutput()
}

// stop sends SIGTERM and expects a clean exit.
func (p *serveProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("tq serve after SIGTERM: %v", err)
		}
		p.done <- nil
	case <-time.After(15 * time.Second):
		t.Fatal("tq serve still running 15 s after SIGTERM")
	}
}

// helper starts this test binary as a helper process playing role. It
// has a token only when env gives one: without, it uses the token file of
// its data directory.
func helper(t *testing.T, wrapper []string, role string, env ...string) *exec.Cmd {
	t.Helper()
	argv := append(append([]string{}, wrapper...), os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(environWithout(auth.EnvToken), "TQ_HELPER="+role), env...)
	return cmd
}

// environWithout is os.Environ() less key. A child process that is to use
// the token file of its data directory must not have $TQ_TOKEN at all:
// set but empty, clients refuse it, as tq serve does.
func environWithout(key string) []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, key+"=") })
}

func runHelpers(t *testing.T, cmds ...*exec.Cmd) {
	t.Helper()
	type result struct {
		name string
		out  []byte
		err  error
	}
	res := make(chan result, len(cmds))
	for _, c := range cmds {
		go func() {
			out, err := c.CombinedOutput()
			res <- result{strings.Join(c.Env[len(c.Env)-3:], " "), out, err}
		}()
	}
	for range cmds {
		select {
		case r := <-res:
			if r.err != nil || !strings.Contains(string(r.out), "HELPER OK") {
				t.Fatalf("helper %s failed: %v\n%s", r.name, r.err, r.out)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("a helper process is still running after 60 s")
		}
	}
}

const helperRows = 64

// helperBatch is what producers write and consumers check: every value
// kind, NaN and Inf included, deterministic in the row index.
func helperBatch(lo, n int) *engine.Batch {
	f32 := make([]float32, 0, n*4)
	var ragged [][]int64
	var text []string
	for i := lo; i < lo+n; i++ {
		f32 = append(f32, float32(i), float32(math.NaN()), float32(math.Inf(1-2*(i%2))), -float32(i))
		r := make([]int64, i%5)
		for j := range r {
			r[j] = int64(i*10 + j)
		}
		ragged = append(ragged, r)
		text = append(text, strings.Repeat(fmt.Sprintf("ü%d-", i), i%7))
	}
	dense, _ := engine.DenseOf(f32, 4)
	return engine.MustBatch(
		engine.Field{Name: "prompt", Col: dense},
		engine.Field{Name: "response", Col: engine.RaggedOf(ragged)},
		engine.Field{Name: "text", Col: engine.StringsOf(text)},
	)
}

func helperKeys(lo, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("sample_%d", lo+i)
	}
	return keys
}

// TestHelperProcess is not a test: it is the body of helper processes.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv("TQ_HELPER")
	if role == "" {
		t.Skip("runs only as a helper process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if role == "intruder" {
		intrude(ctx, t)
		fmt.Println("HELPER OK")
		return
	}
	// $TQ_HOST: another host identity, as a client on another host (it
	// keeps to the address given).
	c, err := client.Connect(ctx, os.Getenv("TQ_ADDR"), client.ConnectConfig{Token: os.Getenv("TQ_TOKEN"), WaitForUnits: true, Name: role,
		Transport: os.Getenv("TQ_TRANSPORT"), RDMA: rdma.Config{Device: os.Getenv("TQ_RDMA_DEVICE")}, Client: client.Config{Host: os.Getenv("TQ_HOST")}})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	switch role {
	case "producer":
		// Two halves, so the consumer's blocking fetch sees data arrive.
		for _, lo := range []int{0, helperRows / 2} {
			b := helperBatch(lo, helperRows/2)
			tags := make([]engine.Tags, helperRows/2)
			for i := range tags {
				tags[i] = engine.Tags{"row": lo + i, "status": "produced"}
			}
			if _, err := kv.BatchPut(ctx, "train", helperKeys(lo, helperRows/2), b, tags); err != nil {
				t.Fatalf("batch put: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	case "consumer":
		// Blocks in the controller until every row is produced.
		m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Task: "trainer", BatchSize: helperRows,
			Fields: []string{"prompt", "response", "text"}, Wait: true})
		if err != nil {
			t.Fatalf("blocking fetch: %v", err)
		}
		got, err := c.Get(ctx, m)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		keys, err := c.KeysOf(ctx, "train", m.Indexes)
		if err != nil {
			t.Fatal(err)
		}
		// Rows come back in index order; check each against its key's data.
		for i, k := range keys {
			var row int
			fmt.Sscanf(k, "sample_%d", &row)
			want := helperBatch(row, 1)
			for _, f := range want.Fields() {
				gc, _ := got.Col(f.Name).Slice(i, i+1)
				if !gc.Equal(f.Col) {
					t.Fatalf("key %s field %s differs", k, f.Name)
				}
			}
		}
		// And through the KV API, with tags.
		kvGot, err := kv.BatchGet(ctx, "train", helperKeys(0, helperRows), "text")
		if err != nil {
			t.Fatal(err)
		}
		if !kvGot.Col("text").Equal(helperBatch(0, helperRows).Col("text")) {
			t.Fatal("text via KV differs")
		}
		kvGot.Release()
		got.Release()
		list, err := kv.List(ctx, "train")
		if err != nil || len(list["train"]) != helperRows {
			t.Fatalf("list: %d keys, %v", len(list["train"]), err)
		}
		if v, _ := list["train"][5].Tags.Int("row"); v != 5 {
			t.Fatalf("tags of key 5: %v", list["train"][5].Tags)
		}
	case "roundtrip":
		b := helperBatch(0, 8)
		if _, err := kv.BatchPut(ctx, "p", helperKeys(0, 8), b, nil); err != nil {
			t.Fatal(err)
		}
		got, err := kv.BatchGet(ctx, "p", helperKeys(0, 8))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range b.Fields() {
			if !got.Col(f.Name).Equal(f.Col) {
				t.Fatalf("field %s differs", f.Name)
			}
		}
		got.Release()
		n, err := kv.SizeOf(ctx, "p", helperKeys(0, 8))
		if err != nil {
			t.Fatal(err)
		}
		into, err := kv.BatchGetInto(ctx, "p", helperKeys(0, 8), make([]byte, n))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range b.Fields() {
			if !into.Col(f.Name).Equal(f.Col) {
				t.Fatalf("field %s differs when read into a buffer", f.Name)
			}
		}
		if err := kv.Clear(ctx, "p", helperKeys(0, 8)); err != nil {
			t.Fatal(err)
		}
	case "shmview":
		// Connected with Transport "shm": every unit is reached through
		// shared memory, so no payload goes over a socket.
		for _, u := range c.Units() {
			if u.Transport() != "shm" {
				t.Fatalf("unit %d reached over %q, want shm", u.ID(), u.Transport())
			}
		}
		b := helperBatch(0, 16)
		keys := helperKeys(0, 16)
		if _, err := kv.BatchPut(ctx, "v", keys, b, nil); err != nil {
			t.Fatal(err)
		}
		v1, err := kv.BatchGetView(ctx, "v", keys, "prompt")
		if err != nil {
			t.Fatal(err)
		}
		v2, err := kv.BatchGetView(ctx, "v", keys, "prompt")
		if err != nil {
			t.Fatal(err)
		}
		if !v1.Col("prompt").Equal(b.Col("prompt")) {
			t.Fatal("prompt via a shm view differs")
		}
		d1, d2 := v1.Col("prompt").Data(), v2.Col("prompt").Data()
		if &d1[0] != &d2[0] {
			t.Fatalf("two views of the same cells at %p and %p: copied, want the unit's shared memory", &d1[0], &d2[0])
		}
		v1.Release()
		v2.Release()
		if err := kv.Clear(ctx, "v", keys); err != nil {
			t.Fatal(err)
		}
		// Forcing shm towards a unit on another host is an error, not a
		// silent downgrade to tcp.
		_, err = client.Connect(ctx, os.Getenv("TQ_ADDR"), client.ConnectConfig{Token: os.Getenv("TQ_TOKEN"), Name: role,
			Transport: "shm", Client: client.Config{Host: "another-host"}})
		if !errors.Is(err, engine.ErrNotSupported) {
			t.Fatalf("connect forcing shm from another host: got %v, want an error wrapping %v", err, engine.ErrNotSupported)
		}
	case "shmhold":
		// Hold a lease and an open reservation, say so, and wait to be
		// killed.
		tok, err := client.FindToken(os.Getenv("TQ_TOKEN"))
		if err != nil {
			t.Fatal(err)
		}
		tr := shm.New(shm.Config{Token: tok})
		sc, err := tr.DialConn(ctx, engine.PeerInfo{Addr: os.Getenv("TQ_UNIT")})
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := sc.Write(ctx, [][][]byte{{make([]byte, 1<<20)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sc.View(ctx, addrs); err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Reserve(ctx, []int64{4 << 20}); err != nil {
			t.Fatal(err)
		}
		if err := sc.Free(ctx, addrs); err != nil {
			t.Fatal(err)
		}
		fmt.Println("HOLDING")
		<-ctx.Done()
	case "stream-producer", "stream-consumer":
		streamHelper(ctx, t, c, role)
	case "mh-write", "mh-read", "mh-lost", "mh-drained":
		multiHostHelper(ctx, t, c, kv, role)
	default:
		t.Fatalf("unknown helper role %q", role)
	}
	fmt.Println("HELPER OK")
}

// TestServeShm: a client process on the unit's host forces the shm
// transport, puts, and gets views of the unit's shared memory.
func TestServeShm(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "64MiB")
	env := append(p.env(), "TQ_ADDR="+p.addr("unix"), "TQ_TRANSPORT=shm")
	runHelpers(t, helper(t, nil, "shmview", env...))
}

// TestServeShmKilledClientGivesBack: a client process killed with SIGKILL
// while it holds a lease and an open reservation gives both back: the unit
// drops them when the client's connection ends.
func TestServeShmKilledClientGivesBack(t *testing.T) {
	bin := tqBinary(t)
	dir := t.TempDir()
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", dir, "--units", "1", "--capacity", "64MiB")
	unit := "unix://" + filepath.Join(dir, "unit-1.sock")
	cmd := helper(t, nil, "shmhold", append(p.env(), "TQ_ADDR="+p.addr("unix"), "TQ_UNIT="+unit)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	held := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "HOLDING" {
				close(held)
			}
		}
	}()
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not report its holds in 30 s")
	}

	tr := shm.New(shm.Config{Token: p.token(t)})
	defer tr.Close()
	sc, err := tr.DialConn(context.Background(), engine.PeerInfo{Addr: unit})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sc.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Leases != 1 || st.OpenReservations != 1 || st.Used == 0 {
		t.Fatalf("before the kill: %d leases, %d open reservations, %d bytes used; want 1, 1, > 0", st.Leases, st.OpenReservations, st.Used)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = sc.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Leases == 0 && st.OpenReservations == 0 && st.Used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the kill: %d leases, %d open reservations, %d bytes used; want none", st.Leases, st.OpenReservations, st.Used)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeProducerConsumer(t *testing.T) {
	bin := tqBinary(t)
	dir := t.TempDir()
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", dir, "--units", "2", "--capacity", "64MiB")
	for _, scheme := range []string{"tcp", "unix"} {
		addr := p.addr(scheme)
		if addr == "" {
			t.Fatalf("no %s address in %v", scheme, p.addrs)
		}
		// Over TCP the data plane is forced to TCP too; over the unix
		// socket the client picks shared memory for these same-host units.
		transport := map[string]string{"tcp": client.TransportTCP, "unix": client.TransportShm}[scheme]
		t.Run(scheme, func(t *testing.T) {
			env := append(p.env(), "TQ_ADDR="+addr, "TQ_TRANSPORT="+transport, "TQ_SCHEME="+scheme)
			runHelpers(t, helper(t, nil, "consumer", env...), helper(t, nil, "producer", env...))
			out, err := p.tqStat(bin, addr)
			if err != nil {
				t.Fatalf("tq stat: %v\n%s", err, out)
			}
			t.Logf("tq stat:\n%s", out)
			for _, want := range []string{"train", "trainer", "64/64 100%", "STORAGE UNITS", "alive", "controller start 1, state durable (fsync batch)"} {
				if !strings.Contains(string(out), want) {
					t.Fatalf("tq stat output lacks %q:\n%s", want, out)
				}
			}
			if !strings.Contains(string(out), "2 MiB huge") && !strings.Contains(string(out), "4 KiB pre-faulted") {
				t.Fatalf("tq stat does not say which pages the units use:\n%s", out)
			}
			c, err := client.Connect(context.Background(), addr, client.ConnectConfig{Token: p.token(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.ClearPartition(context.Background(), "train"); err != nil {
				t.Fatal(err)
			}
		})
	}
	p.stop(t)
}

func TestServeRejectsBadConfig(t *testing.T) {
	bin := tqBinary(t)
	cfgFile := filepath.Join(t.TempDir(), "tq.yaml")
	// openDir returns a fresh directory with mode, for --socket-dir or
	// --data-dir.
	openDir := func(mode os.FileMode) func(t *testing.T) string {
		return func(t *testing.T) string {
			d := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, mode); err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	openToken := func(t *testing.T) string {
		d := t.TempDir()
		tok := filepath.Join(d, auth.TokenFile)
		if err := os.WriteFile(tok, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(tok, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, tc := range []struct {
		name string
		yaml string
		args []string
		// dir, if set, makes a directory passed as the value of the last
		// of args.
		dir  func(t *testing.T) string
		want string
	}{
		{"unknown role", "", []string{"--role", "boss"}, nil, `role "boss"`},
		{"bad metrics address", "", []string{"--metrics", "nowhere"}, nil, `--metrics "nowhere"`},
		{"bad log format", "", []string{"--log-format", "xml"}, nil, `--log-format "xml": want text or json`},
		{"bad log level", "log_level: loud\n", nil, nil, `--log-level "loud"`},
		{"unit without controller", "", []string{"--role", "unit"}, nil, "needs --controller"},
		{"insecure with a token", "", []string{"--insecure", "--token", "x"}, nil, "contradict"},
		{"bad capacity", "", []string{"--capacity", "lots"}, nil, "size"},
		{"bad sampler", "", []string{"--sampler", "grpo:x"}, nil, "sampler"},
		{"unknown yaml key", "colour: blue\n", nil, nil, "colour"},
		{"yaml values validated", "units: 0\n", nil, nil, "at least one storage unit"},
		// Someone else's /tmp/tq-$UID, or one made open to all: its
		// owner, or anyone, could delete the sockets or put their own in.
		{"world-writable socket dir", "", []string{"--socket-dir"}, openDir(0o777), "mode 0777"},
		{"sticky world-writable socket dir", "", []string{"--socket-dir"}, openDir(0o777 | os.ModeSticky), "mode 1777"},
		{"group-writable data dir", "", []string{"--data-dir"}, openDir(0o770), "mode 0770"},
		{"token file others can read", "", []string{"--listen", "0.0.0.0:0", "--data-dir"}, openToken, "mode 0644"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := slices.Clone(tc.args)
			if tc.dir != nil {
				args = append(args, tc.dir(t))
			}
			args = append([]string{"serve"}, serveArgs([]string{"--socket-dir=" + t.TempDir()}, args...)...)
			if tc.yaml != "" {
				os.WriteFile(cfgFile, []byte(tc.yaml), 0o644)
				args = append(args, "--config", cfgFile)
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+t.TempDir())
			out, err := runFor(cmd, 20*time.Second)
			if err == nil {
				t.Fatalf("tq %v succeeded:\n%s", args, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("tq %v: message lacks %q:\n%s", args, tc.want, out)
			}
		})
	}
	t.Run("socket dir of another user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give a directory to another user")
		}
		d := openDir(0o755)(t)
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--socket-dir", d)
		cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+t.TempDir())
		out, err := runFor(cmd, 20*time.Second)
		if err == nil || !strings.Contains(string(out), "owned by uid 65534") {
			t.Fatalf("tq serve --socket-dir %s (owned by uid 65534): %v\n%s", d, err, out)
		}
	})
}

// runFor runs cmd, killing it after d: a server that should have refused
// to start does not hang the test.
func runFor(cmd *exec.Cmd, d time.Duration) ([]byte, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	timer := time.AfterFunc(d, func() { cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Wait()
	return []byte(out.String()), err
}

// TestOtherUserNeedsToken: another local user — a process with neither
// the token nor this user's token file — reaches none of a default tq
// serve's listeners: not the controller over loopback TCP or its unix
// socket, not a unit's TCP or unix socket, not its fd socket. What the
// owner put is still there afterwards.
func TestOtherUserNeedsToken(t *testing.T) {
	bin := tqBinary(t)
	dir := t.TempDir()
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", dir, "--units", "1", "--capacity", "16MiB")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, p.addr("tcp"), client.ConnectConfig{Token: p.token(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	want := helperBatch(0, 4)
	if _, err := kv.BatchPut(ctx, "p", helperKeys(0, 4), want, nil); err != nil {
		t.Fatal(err)
	}
	if len(p.units) != 1 {
		t.Fatalf("unit addresses: %v", p.units)
	}
	var unitTCP, unitUnix, unitFd string
	for _, a := range p.units[0] {
		switch {
		case strings.HasPrefix(a, "tcp://"):
			unitTCP = a
		case strings.HasPrefix(a, "unix://"):
			unitUnix = a
		case strings.HasPrefix(a, "shm://"):
			unitFd = a
		}
	}
	// The same user without the token, over the unix sockets: admitted
	// by SO_PEERCRED (it could read the token file), shared memory too.
	t.Run("same user over unix sockets", func(t *testing.T) {
		unsetEnv(t, auth.EnvToken)
		t.Setenv(auth.EnvDataDir, t.TempDir())
		mine, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Transport: client.TransportShm, WaitForUnits: true, Name: "same-user"})
		require.NoError(t, err, "the owner's user without the token")
		defer mine.Close()
		got, err := kvapi.New(mine).BatchGetCopy(ctx, "p", helperKeys(0, 4))
		require.NoError(t, err)
		for _, f := range want.Fields() {
			require.True(t, got.Col(f.Name).Equal(f.Col), "field %s over shared memory", f.Name)
		}
	})
	env := []string{"TQ_CTRL_TCP=" + p.addr("tcp"), "TQ_CTRL_UNIX=" + p.addr("unix"),
		"TQ_UNIT_TCP=" + unitTCP, "TQ_UNIT_UNIX=" + unitUnix}
	// The same user without the token (a client that lost it).
	runHelpers(t, helper(t, nil, "intruder", append([]string{auth.EnvDataDir + "=" + t.TempDir(), "TQ_INTRUDER_SAME_UID=1"}, env...)...))
	// Another user, when this test may be one (as root: CI).
	if os.Geteuid() == 0 {
		shared, err := os.MkdirTemp("", "tq-intruder-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(shared) })
		os.Chmod(shared, 0o755)
		bin := filepath.Join(shared, "tq.test")
		if b, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(bin, b, 0o755) != nil {
			t.Fatalf("copy the test binary for another user: %v", err)
		}
		other := filepath.Join(shared, "home")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		intruder := func(extra ...string) *exec.Cmd {
			cmd := exec.Command(bin, "-test.run=^TestHelperProcess$", "-test.v")
			cmd.Env = append(append(append(environWithout(auth.EnvToken), "TQ_HELPER=intruder", auth.EnvDataDir+"="+filepath.Join(other, "tq"), "HOME="+other), env...), extra...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			return cmd
		}
		runHelpers(t, intruder())
		// Behind the private directory, each unix socket asks for the
		// token too: opened to the other user (as a socket directory
		// made open by hand would be), the controller's and the unit's
		// sockets refuse its handshake, and the unit's fd socket hands
		// it neither a segment nor a control ring.
		for _, d := range []string{filepath.Dir(dir), dir} {
			require.NoError(t, os.Chmod(d, 0o711))
		}
		for _, a := range []string{p.addr("unix"), unitUnix, unitFd} {
			require.NoError(t, os.Chmod(a[strings.Index(a, "://")+3:], 0o666))
		}
		runHelpers(t, intruder("TQ_INTRUDER_OPEN=1", "TQ_UNIT_FD="+unitFd))
	}

	got, err := kv.BatchGet(ctx, "p", helperKeys(0, 4))
	if err != nil {
		t.Fatalf("the owner's data after the intruder: %v", err)
	}
	defer got.Release()
	for _, f := range want.Fields() {
		if !got.Col(f.Name).Equal(f.Col) {
			t.Fatalf("field %s changed", f.Name)
		}
	}
}

// intrude is the helper role of another user: every way in is refused
// with an error wrapping wire.ErrUnauthenticated.
func intrude(ctx context.Context, t *testing.T) {
	if tok, err := client.FindToken(""); tok != "" || err != nil {
		t.Fatalf("the intruder found a token %q (%v)", tok, err)
	}
	// Run as this test's own user, the intruder has no token but its unix
	// sockets admit it by SO_PEERCRED (it could read the token file): only
	// the TCP listeners are tried. Run as another user, it meets private
	// socket directories (no permission) and missing tokens everywhere.
	sameUser := os.Getenv("TQ_INTRUDER_SAME_UID") != ""
	// Opened to it, the sockets are reached: only the token check stands.
	opened := os.Getenv("TQ_INTRUDER_OPEN") != ""
	unauthenticated := func(what string, err error) {
		t.Helper()
		if errors.Is(err, wire.ErrUnauthenticated) || (!sameUser && !opened && errors.Is(err, os.ErrPermission)) {
			return
		}
		t.Errorf("%s without the token: got %v, want an error wrapping %v", what, err, wire.ErrUnauthenticated)
	}
	addrs := func(keys ...string) []string {
		var out []string
		for _, k := range keys {
			if sameUser && strings.HasSuffix(k, "_UNIX") {
				continue
			}
			out = append(out, os.Getenv(k))
		}
		return out
	}
	for _, addr := range addrs("TQ_CTRL_TCP", "TQ_CTRL_UNIX") {
		c, err := client.Connect(ctx, addr, client.ConnectConfig{Name: "intruder"})
		if err == nil {
			// Had it got in, this is what it would have done.
			c.ClearPartition(ctx, "p")
			c.Close()
		}
		unauthenticated("connect to the controller at "+addr, err)
	}
	tr := tcp.New(tcp.Config{Name: "intruder"})
	defer tr.Close()
	for _, addr := range addrs("TQ_UNIT_TCP", "TQ_UNIT_UNIX") {
		_, err := tr.Dial(ctx, engine.PeerInfo{Addr: addr})
		unauthenticated("dial the unit at "+addr, err)
	}
	if sameUser {
		return
	}
	st := shm.New(shm.Config{Name: "intruder"})
	defer st.Close()
	_, err := st.DialConn(ctx, engine.PeerInfo{Addr: os.Getenv("TQ_UNIT_UNIX")})
	unauthenticated("shared memory of the unit", err)
	if fdSock, ok := strings.CutPrefix(os.Getenv("TQ_UNIT_FD"), "shm://"); ok {
		for _, req := range []wire.FdRequest{{Segment: 1}, {Ring: true}} {
			unauthenticated(fmt.Sprintf("the unit's fd socket %s for %+v", fdSock, req), askFdSocket(fdSock, req))
		}
	}
}

// askFdSocket sends req to the fd socket at path and returns the error
// its reply's status says, or why there was no reply; an fd handed over
// is an error too.
func askFdSocket(path string, req wire.FdRequest) error {
	nc, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	uc := nc.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write(req.Append(nil)); err != nil {
		return err
	}
	buf, oob := make([]byte, wire.FdReplySize), make([]byte, 64)
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return err
	}
	if oobn > 0 {
		return fmt.Errorf("the fd socket handed over a descriptor (status of %d bytes)", n)
	}
	rep, err := wire.ParseFdReply(buf[:n])
	if err != nil {
		return err
	}
	return rep.Status.Err()
}

// A storage unit killed with SIGKILL: readers of its cells get ErrLost
// within their deadline, never a hang, and tq stat reports it LOST.
func TestKilledUnitIsLostNotHung(t *testing.T) {
	bin := tqBinary(t)
	var stderr syncBuffer
	ctrl, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin,
		"--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--heartbeat", "100ms", "--metrics", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.kill)
	addr := ctrl.addr("tcp")
	// The unit finds the controller's token as a client of the same user
	// does: no --token, the same data directory.
	unit := startServeIn(t, ctrl.dataDir, nil, bin, "--role", "unit", "--controller", addr, "--socket-dir", "", "--capacity", "16MiB", "--metrics", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, addr, client.ConnectConfig{WaitForUnits: true, Token: ctrl.token(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Each process serves its own metrics; the controller names both,
	// its own first, then the live unit's.
	eps, err := c.MetricsEndpoints(ctx)
	if err != nil || len(eps) != 2 || eps[0] == eps[1] || !strings.HasPrefix(eps[1], "http://127.0.0.1:") {
		t.Fatalf("MetricsEndpoints = %q, %v; want the controller's and the unit's", eps, err)
	}
	kv := kvapi.New(c)
	if _, err := kv.BatchPut(ctx, "p", helperKeys(0, 4), helperBatch(0, 4), nil); err != nil {
		t.Fatal(err)
	}
	unit.cmd.Process.Signal(syscall.SIGKILL)
	<-unit.done
	unit.done <- nil
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	start := time.Now()
	_, err = kv.BatchGet(rctx, "p", helperKeys(0, 4))
	if !errors.Is(err, engine.ErrLost) {
		t.Fatalf("read from a killed unit: got %v, want ErrLost", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("the read took %v to fail", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := ctrl.tqStat(bin, addr)
		if strings.Contains(string(out), "LOST") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tq stat never reported the unit lost:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The controller logs the loss once, however long the unit stays
	// silent. Its watcher logs on its own tick, maybe after tq stat
	// showed the loss: wait for the line, then for any repeat.
	lost := func() int { return strings.Count(stderr.String(), "storage unit lost") }
	deadline = time.Now().Add(10 * time.Second)
	for lost() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // several ticks of the watcher
	if n := lost(); n != 1 {
		t.Fatalf("the controller logged the unit's loss %d times, want once:\n%s", n, stderr.String())
	}
	if eps, err := c.MetricsEndpoints(ctx); err != nil || len(eps) != 1 {
		t.Fatalf("MetricsEndpoints with the unit lost = %q, %v; want the controller's only", eps, err)
	}
	ctrl.stop(t)
}

// A storage unit reached over shared memory, killed with SIGKILL: reads
// and writes fail fast with ErrLost naming the unit, and views taken
// before the kill stay readable (the client's mappings keep the memfd
// pages alive, so nothing faults) until they are released.
func TestKilledShmUnitFailsFast(t *testing.T) {
	bin := tqBinary(t)
	dir := t.TempDir()
	ctrl := startServe(t, nil, bin, "--role", "controller", "--listen", "127.0.0.1:0", "--socket-dir", dir, "--heartbeat", "100ms")
	addr := ctrl.addr("unix")
	unit := startServeIn(t, ctrl.dataDir, nil, bin, "--role", "unit", "--controller", addr, "--socket-dir", dir, "--capacity", "16MiB")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, addr, client.ConnectConfig{WaitForUnits: true, Transport: client.TransportShm, Token: ctrl.token(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv := kvapi.New(c)
	// Big enough to be lent as views (see shm.InlineMax).
	want := helperBatch(0, 512)
	if _, err := kv.BatchPut(ctx, "p", helperKeys(0, 512), want, nil); err != nil {
		t.Fatal(err)
	}
	view, err := kv.BatchGet(ctx, "p", helperKeys(0, 512))
	if err != nil {
		t.Fatal(err)
	}
	if !view.Aliased() {
		t.Fatal("a get over shm did not return views")
	}
	unit.cmd.Process.Signal(syscall.SIGKILL)
	<-unit.done
	unit.done <- nil

	for name, op := range map[string]func(context.Context) error{
		"get": func(ctx context.Context) error { _, err := kv.BatchGet(ctx, "p", helperKeys(0, 512)); return err },
		"put": func(ctx context.Context) error {
			_, err := kv.BatchPut(ctx, "p", helperKeys(512, 512), want, nil)
			return err
		},
	} {
		octx, ocancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		err := op(octx)
		ocancel()
		if !errors.Is(err, engine.ErrLost) && !errors.Is(err, engine.ErrUnavailable) {
			t.Errorf("%s on a killed unit: %v, want ErrLost or ErrUnavailable", name, err)
		} else if !strings.Contains(err.Error(), "unit") {
			t.Errorf("%s: the error does not name the unit: %v", name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s took %v to fail", name, d)
		}
		t.Logf("%s: %v", name, err)
	}
	for _, f := range want.Fields() {
		if !view.Col(f.Name).Equal(f.Col) {
			t.Fatalf("after the kill, the view of %s differs", f.Name)
		}
	}
	view.Release() // the unit is gone: nothing to tell it, and no hang
	ctrl.stop(t)
}

// TestServeInsecure: --insecure is the explicit opt-out: no token is made
// or asked for, so a client with none gets in.
func TestServeInsecure(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--insecure", "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB")
	if _, err := os.Stat(filepath.Join(p.dataDir, auth.TokenFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--insecure made a token file: %v", err)
	}
	runHelpers(t, helper(t, nil, "roundtrip", auth.EnvDataDir+"="+t.TempDir(), "TQ_ADDR="+p.addr("tcp")))
	p.stop(t)
}
