package bench

// The writer and the reader of a flow are this binary re-executed with
// roleEnv set: a test binary or the tq command alike call [ChildMain]
// first thing, which runs the role and exits. The driver talks to each
// child over its stdin and stdout, one JSON request and one JSON reply per
// line; the child's stderr is kept for error messages. A child dies with
// its parent: SIGKILL on the parent's death (Pdeathsig), and an orderly
// exit when its stdin reaches EOF.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

const (
	roleEnv   = "TQ_BENCH_ROLE"
	configEnv = "TQ_BENCH_CONFIG"

	roleWriter = "writer"
	roleReader = "reader"

	// flowPartition is the partition the flow writes, as the reference's.
	flowPartition = "train_0"
	// streamChunk is the write size of the socket baselines.
	streamChunk = 1 << 20
)

// childConfig is what a child learns from its environment.
type childConfig struct {
	Controller string
	Token      string // the environment is private to the user, as the token file is
	Transport  string
	Workload   Workload
	Case       string
	Partition  string // "" for flowPartition
	Listen     string // where a reader's stream listener binds; "" for 127.0.0.1:0
}

// flowReq is one request from the driver to a child.
type flowReq struct {
	Op   string
	Net  string // "tcp" or "unix" for the stream ops
	Addr string // for "dial": tcp address, then unix path
	Unix string
	Sum  uint64 // the checksum a get must match
}

// flowResp is a child's reply. Err is set when the request failed.
type flowResp struct {
	Err  string `json:",omitempty"`
	Ns   int64  `json:",omitempty"`
	Sum  uint64 `json:",omitempty"`
	TCP  string `json:",omitempty"` // reader's ready reply: its listeners
	Unix string `json:",omitempty"`
}

// ChildMain runs this process as a flow's writer or reader and exits when
// it was started as one; otherwise it returns at once. Call it first thing
// in main or TestMain of any binary that runs flows.
func ChildMain() {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	if err := runChild(role, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "tq bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild(role string, in io.Reader, out io.Writer) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &cfg); err != nil {
		return fmt.Errorf("read %s: %w", configEnv, err)
	}
	// Belt and braces next to Pdeathsig: leave if the parent goes.
	ppid := os.Getppid()
	go func() {
		for range time.Tick(time.Second) {
			if os.Getppid() != ppid {
				os.Exit(3)
			}
		}
	}()
	ctx := context.Background()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ccfg := connectConfig(cfg.Transport, role)
	ccfg.Token = cfg.Token
	c, err := client.Connect(cctx, cfg.Controller, ccfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect over %s: %w", cfg.Transport, err)
	}
	defer c.Close()
	var ch child
	ch.kv = kvapi.New(c)
	ch.part = cmp.Or(cfg.Partition, flowPartition)
	ch.w = cfg.Workload
	ch.keys = cfg.Workload.Keys()
	enc := json.NewEncoder(out)
	var ready flowResp
	switch role {
	case roleWriter:
		if ch.batch, err = cfg.Workload.Build(cfg.Case); err != nil {
			return err
		}
		ready.Sum = Checksum(ch.batch)
		ch.buf = prefaulted(ch.batch.Size())
	case roleReader:
		ch.buf = prefaulted(int(cfg.Workload.Bytes(cfg.Case)))
		if ch.tcpL, err = net.Listen("tcp", cmp.Or(cfg.Listen, "127.0.0.1:0")); err != nil {
			return err
		}
		defer ch.tcpL.Close()
		// An abstract socket: nothing in the file system to leave behind.
		path := fmt.Sprintf("@tq-bench-reader-%d-%d", os.Getpid(), time.Now().UnixNano())
		if ch.unixL, err = net.Listen("unix", path); err != nil {
			return err
		}
		defer ch.unixL.Close()
		ready.TCP, ready.Unix = ch.tcpL.Addr().String(), path
	default:
		return fmt.Errorf("unknown role %q: %w", role, engine.ErrInvalid)
	}
	defer ch.close()
	if err := enc.Encode(ready); err != nil {
		return err
	}
	dec := json.NewDecoder(bufio.NewReader(in))
	for {
		var req flowReq
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the driver is done, or gone
			}
			return fmt.Errorf("read request: %w", err)
		}
		t0 := time.Now()
		d, err := ch.do(ctx, req)
		if d == 0 {
			d = time.Since(t0)
		}
		resp := flowResp{Ns: d.Nanoseconds()}
		if err != nil {
			resp = flowResp{Err: fmt.Sprintf("%s %s: %v", role, req.Op, err)}
		}
		if err := enc.Encode(resp); err != nil {
			return err
		}
	}
}

// connectConfig forces the data plane. For tcp the client claims another
// host, so that it reaches the unit through its TCP address rather than
// its unix socket; "unix" is TQ's stream transport over the unix socket.
func connectConfig(transport, role string) client.ConnectConfig {
	cfg := client.ConnectConfig{WaitForUnits: true, Name: "bench-" + role}
	switch transport {
	case "shm":
		cfg.Transport = client.TransportShm
	case "tcp":
		cfg.Transport = client.TransportTCP
		cfg.Client = client.Config{Host: "tq-bench-elsewhere"}
	case "unix":
		cfg.Transport = client.TransportTCP
	case "rdma":
		cfg.Transport = client.TransportRDMA
		cfg.RDMA.Device, _ = RDMADevice()
		cfg.Client = client.Config{Host: "tq-bench-elsewhere"}
	}
	return cfg
}

// prefaulted returns n bytes whose pages are already faulted in.
func prefaulted(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

// child is a writer's or a reader's state.
type child struct {
	kv    *kvapi.KV
	part  string // the partition it puts to and gets from
	w     Workload
	keys  []string
	batch *engine.Batch // writer: what it puts
	buf   []byte        // writer: memcpy target; reader: get_copy and stream target

	tcpL, unixL net.Listener // reader
	conns       map[string]net.Conn
}

func (ch *child) close() {
	for _, c := range ch.conns {
		c.Close()
	}
}

// do runs one request. It returns the time of the measured part when it
// is not the whole request.
func (ch *child) do(ctx context.Context, req flowReq) (time.Duration, error) {
	switch req.Op {
	case "put":
		t0 := time.Now()
		_, err := ch.kv.BatchPut(ctx, ch.part, ch.keys, ch.batch, nil)
		return time.Since(t0), err

	case "memcpy":
		t0 := time.Now()
		at := 0
		for _, f := range ch.batch.Fields() {
			at += copy(ch.buf[at:], f.Col.Data())
		}
		return time.Since(t0), nil

	case "list":
		l, err := ch.kv.List(ctx, ch.part)
		if err != nil {
			return 0, err
		}
		if n := len(l[ch.part]); n != len(ch.keys) {
			return 0, fmt.Errorf("listed %d keys, put %d", n, len(ch.keys))
		}
		return 0, nil

	case "get":
		runtime.GC() // no collection of the last get's garbage inside this one
		t0 := time.Now()
		// The default batch get: views into storage over shm, a copy
		// the reader owns elsewhere.
		got, err := ch.kv.BatchGet(ctx, ch.part, ch.keys)
		if err != nil {
			return 0, err
		}
		d := time.Since(t0)
		defer got.Release()
		return d, verify(got, req.Sum, ch.w.Batch)

	case "get_copy":
		runtime.GC()
		t0 := time.Now()
		got, err := ch.kv.BatchGetInto(ctx, ch.part, ch.keys, ch.buf)
		if err != nil {
			return 0, err
		}
		d := time.Since(t0)
		return d, verify(got, req.Sum, ch.w.Batch)

	case "clear":
		return 0, ch.kv.Clear(ctx, ch.part, ch.keys)

	case "accept": // reader: both streams, or the one req.Net names
		ch.conns = map[string]net.Conn{}
		ls := []net.Listener{ch.tcpL, ch.unixL}
		if req.Net == "tcp" {
			ls = ls[:1]
		}
		for _, l := range ls {
			c, err := l.Accept()
			if err != nil {
				return 0, err
			}
			ch.conns[l.Addr().Network()] = c
		}
		return 0, nil

	case "dial": // writer
		ch.conns = map[string]net.Conn{}
		for _, a := range [][2]string{{"tcp", req.Addr}, {"unix", req.Unix}} {
			if a[1] == "" {
				continue // a reader on another host: its abstract socket is out of reach
			}
			c, err := net.Dial(a[0], a[1])
			if err != nil {
				return 0, err
			}
			ch.conns[a[0]] = c
		}
		return 0, nil

	case "send": // writer: stream the batch's bytes, wait for the ack
		c := ch.conns[req.Net]
		if c == nil {
			return 0, fmt.Errorf("no %q stream", req.Net)
		}
		t0 := time.Now()
		for _, f := range ch.batch.Fields() {
			for d := f.Col.Data(); len(d) > 0; {
				k := min(len(d), streamChunk)
				if _, err := c.Write(d[:k]); err != nil {
					return 0, err
				}
				d = d[k:]
			}
		}
		var ack [1]byte
		if _, err := io.ReadFull(c, ack[:]); err != nil {
			return 0, err
		}
		return time.Since(t0), nil

	case "recv": // reader: the stream's bytes into the get_copy buffer
		c := ch.conns[req.Net]
		if c == nil {
			return 0, fmt.Errorf("no %q stream", req.Net)
		}
		if _, err := io.ReadFull(c, ch.buf); err != nil {
			return 0, err
		}
		_, err := c.Write([]byte{1})
		return 0, err
	}
	return 0, fmt.Errorf("unknown op %q: %w", req.Op, engine.ErrInvalid)
}

// errChecksum reports a get whose bytes differ from what was put.
var errChecksum = errors.New("bench: checksum mismatch")

func verify(got *engine.Batch, want uint64, rows int) error {
	if got.Rows() != rows {
		return fmt.Errorf("got %d rows, want %d: %w", got.Rows(), rows, errChecksum)
	}
	if sum := Checksum(got); sum != want {
		return fmt.Errorf("got checksum %#x, want %#x: %w", sum, want, errChecksum)
	}
	return nil
}

// proc is the driver's handle on a child process.
type proc struct {
	role   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	dec    *json.Decoder
	stderr *tailBuffer
	exited chan struct{}
	// waitErr is cmd.Wait's error (how the child ended: "signal:
	// killed", "exit status 3"), set before exited is closed.
	waitErr error
}

// startProc re-executes exe (with args) as role and waits for its ready
// reply.
func startProc(exe string, args []string, role string, cfg childConfig) (*proc, flowResp, error) {
	js, err := json.Marshal(cfg)
	if err != nil {
		return nil, flowResp{}, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role, configEnv+"="+string(js))
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// A race-enabled child would otherwise sleep a second on exit.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{role: role, cmd: cmd, stderr: &tailBuffer{max: 8 << 10}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, flowResp{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, flowResp{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, flowResp{}, fmt.Errorf("start %s: %w", role, err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.exited) }()
	p.enc = json.NewEncoder(p.stdin)
	p.dec = json.NewDecoder(stdout)
	ready, err := p.recv()
	if err != nil {
		p.close()
		return nil, flowResp{}, err
	}
	return p, ready, nil
}

func (p *proc) send(req flowReq) error {
	if err := p.enc.Encode(req); err != nil {
		return p.died(err)
	}
	return nil
}

func (p *proc) recv() (flowResp, error) {
	var r flowResp
	if err := p.dec.Decode(&r); err != nil {
		return r, p.died(err)
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

func (p *proc) call(req flowReq) (flowResp, error) {
	if err := p.send(req); err != nil {
		return flowResp{}, err
	}
	return p.recv()
}

// died explains a broken pipe to a child with how it ended, if it did
// within a few seconds ("signal: killed", "exit status 3"), and what it
// wrote on stderr.
func (p *proc) died(err error) error {
	err = fmt.Errorf("%s process: %w", p.role, err)
	select {
	case <-p.exited:
		if p.waitErr != nil {
			err = fmt.Errorf("%w (%v)", err, p.waitErr)
		} else {
			err = fmt.Errorf("%w (it exited)", err)
		}
	case <-time.After(2 * time.Second):
	}
	if tail := bytes.TrimSpace(p.stderr.Bytes()); len(tail) > 0 {
		return fmt.Errorf("%w: %s", err, tail)
	}
	return err
}

// close ends the child: EOF on its stdin, then SIGKILL if it has not
// exited within a few seconds. It returns once the child is gone.
func (p *proc) close() {
	p.stdin.Close()
	p.wait()
}

// wait waits a few seconds for the child to exit, then kills it.
func (p *proc) wait() {
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// kill ends the child at once (the driver's context ended).
func (p *proc) kill() { p.cmd.Process.Kill() }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, b...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.b)
}
