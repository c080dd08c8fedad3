package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// fakeListener hands out what is sent on accepts: a connection or an
// error.
type fakeListener struct {
	accepts chan any
	done    chan struct{}
	once    sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) {
	select {
	case a := <-l.accepts:
		if err, ok := a.(error); ok {
			return nil, err
		}
		return a.(net.Conn), nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// offer hands a to the next Accept, failing the test if Serve does not
// call it within 5 s.
func (l *fakeListener) offer(t *testing.T, a any) {
	t.Helper()
	select {
	case l.accepts <- a:
	case <-time.After(5 * time.Second):
		t.Fatalf("Serve stopped accepting (offered %v)", a)
	}
}

func (l *fakeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *fakeListener) Addr() net.Addr { return &net.UnixAddr{Name: "fake", Net: "unix"} }

// TestAcceptBacksOff: accept errors that pass (out of file descriptors,
// an aborted connection) do not end Serve; the trouble is logged once
// when it starts and once when it ends, not per failure. Other errors end
// it.
func TestAcceptBacksOff(t *testing.T) {
	var logs logBuffer
	s := NewServer(ServerConfig{Logger: logs.logger()})
	t.Cleanup(func() { s.Close() })
	l := &fakeListener{accepts: make(chan any), done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()

	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	aborted := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}
	start := time.Now()
	for i := range 6 {
		l.offer(t, error(emfile))
		if i == 3 {
			l.offer(t, error(aborted))
		}
	}
	cn, sn := net.Pipe()
	l.offer(t, sn)
	// Backing off 5, 10, 20, ... ms: the sixth retry comes after 315 ms.
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("7 failed accepts took %v: not backing off", took)
	}
	c := NewConn(cn, ConnConfig{KeepAlive: -1})
	t.Cleanup(func() { c.Close() })
	if _, err := c.Hello(t.Context(), &wirepb.Hello{Role: "client"}); err != nil {
		t.Fatalf("connection accepted after the failures: %v", err)
	}
	got := logs.String()
	if n, m := strings.Count(got, "accept failing"), strings.Count(got, "accepting again"); n != 1 || m != 1 {
		t.Errorf("7 failures then a success logged 'accept failing' %d times and 'accepting again' %d times, want once each:\n%s", n, m, got)
	}
	if !strings.Contains(got, "occurrences=7") {
		t.Errorf("the end of the trouble does not count 7 failures:\n%s", got)
	}

	l.offer(t, errors.New("listener broke for good"))
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "for good") {
			t.Errorf("Serve returned %v, want the permanent accept error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5 s after a permanent accept error")
	}
}

// fdChildEnv makes the test binary a child server for
// TestAcceptSurvivesFdExhaustion.
const fdChildEnv = "TQ_WIRE_FD_CHILD"

// TestAcceptSurvivesFdExhaustion runs a server in a child process whose
// file descriptor limit is 256, opens more connections than that, closes
// them, and checks that the same listener still serves a new client.
func TestAcceptSurvivesFdExhaustion(t *testing.T) {
	if os.Getenv(fdChildEnv) != "" {
		fdChild()
		return
	}
	const conns = 300 // past the child's limit of 256
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*conns {
		t.Skipf("this process may not open %d connections (limit %d, %v)", 2*conns, lim.Cur, err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptSurvivesFdExhaustion$")
	cmd.Env = append(os.Environ(), fdChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the child exits when its stdin closes
		cmd.Wait()
	})
	var (
		mu    sync.Mutex
		lines []string
		event = make(chan string, 1024)
	)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
			event <- sc.Text()
		}
		close(event)
	}()
	waitLine := func(what string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case line, ok := <-event:
				if !ok {
					t.Fatalf("child exited before logging %q", what)
				}
				if strings.Contains(line, "serve returned") {
					t.Fatalf("the child's Serve returned: %s", line)
				}
				if strings.Contains(line, what) {
					return
				}
			case <-timeout:
				t.Fatalf("child logged no %q in 10 s", what)
			}
		}
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child's address: %v", err)
	}
	addr = strings.TrimSpace(addr)

	ncs := make([]net.Conn, 0, conns)
	for range conns {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ncs = append(ncs, nc)
	}
	waitLine("accept failing")
	time.Sleep(1500 * time.Millisecond) // several retries fail meanwhile
	for _, nc := range ncs {
		nc.Close()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, "tcp://"+addr, &wirepb.Hello{Role: "client"}, ConnConfig{})
	if err != nil {
		t.Fatalf("new client after the connections closed: %v", err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	waitLine("accepting again")
	mu.Lock()
	defer mu.Unlock()
	var failing int
	for _, line := range lines {
		if strings.Contains(line, "accepting again") {
			break
		}
		if strings.Contains(line, "accept failing") {
			failing++
		}
	}
	if failing != 1 {
		t.Errorf("logged 'accept failing' %d times before 'accepting again', want once:\n%s", failing, strings.Join(lines, "\n"))
	}
}

// fdChild serves with a file descriptor limit of 256 until its stdin
// closes, printing its address on stdout and logging on stderr.
func fdChild() {
	lim := syscall.Rlimit{Cur: 256, Max: 256}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err == nil && old.Max < lim.Max {
		lim = old
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		os.Exit(2)
	}
	s := NewServer(ServerConfig{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	fmt.Println(l.Addr())
	go func() {
		err := s.Serve(l)
		fmt.Fprintln(os.Stderr, "serve returned:", err)
	}()
	os.Stdin.Read(make([]byte, 1)) // until the parent closes it
	s.Close()
	os.Exit(0)
}

// TestConnectionLimit: past MaxConns a connection's HELLO is answered
// with CODE_CAPACITY naming the limit, at once, and the connection is
// closed; connections that do not even send a HELLO are closed within
// about a second; once connections leave, a new client is served.
func TestConnectionLimit(t *testing.T) {
	var logs logBuffer
	const limit = 4
	s, addr := startServer(t, ServerConfig{MaxConns: limit, MaxHandshakes: -1, HandshakeTimeout: time.Minute, Logger: logs.logger()}, "tcp")
	var flood []net.Conn
	for range limit {
		flood = append(flood, rawDial(t, addr, nil)) // never says HELLO
	}
	waitFor(t, "the flood admitted", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.nconns == limit
	})
	for range 3 {
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, _, err := Dial(ctx, addr, &wirepb.Hello{Role: "client"}, ConnConfig{})
		cancel()
		if !errors.Is(err, engine.ErrCapacity) || !strings.Contains(err.Error(), fmt.Sprintf("server has %d connections, the limit is %d", limit, limit)) {
			t.Fatalf("dial past the limit: got %v, want CODE_CAPACITY naming the limit", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("refusal took %v", took)
		}
	}
	silent := rawDial(t, addr, nil)
	if took := waitClosed(t, silent, 5*time.Second); took > 2*time.Second {
		t.Errorf("a refused connection that sends nothing was closed after %v, want about 1 s", took)
	}
	if got := strings.Count(logs.String(), "refusing connections"); got != 1 {
		t.Errorf("logged refusals %d times, want once:\n%s", got, logs.String())
	}
	for _, nc := range flood {
		nc.Close()
	}
	waitFor(t, "a client served after the flood left", func() bool {
		c, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, ConnConfig{})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.Ping(t.Context()) == nil
	})
}

// TestNoConnectionLimit: a negative MaxConns admits any number.
func TestNoConnectionLimit(t *testing.T) {
	s, addr := startServer(t, ServerConfig{MaxConns: -1}, "tcp")
	for range DefaultMaxConns / 64 {
		rawDial(t, addr, nil)
	}
	dial(t, addr, "")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nrefusing != 0 {
		t.Fatalf("%d connections being refused without a limit", s.nrefusing)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
