package bench

// The redis-server baseline: a throwaway redis-server on loopback, started
// by the benchmark when the binary is installed, and a minimal RESP client
// (SET, GET, PING; one request in flight per connection, like a KV call).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// startRedis starts redis-server on a free loopback port with persistence
// off and returns its address; the server is killed in tb's cleanup. It
// skips tb when redis-server is not installed.
func startRedis(tb testing.TB) (addr string, pid int) {
	tb.Helper()
	addr, _, pid = startRedisSock(tb)
	return addr, pid
}

// startRedisSock is startRedis that also returns the path of the unix
// socket the server listens on too. extra are more redis-server options,
// after the defaults (the last of an option given twice counts).
func startRedisSock(tb testing.TB, extra ...string) (addr, sock string, pid int) {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Skipf("redis-server is not installed (apt-get install redis-server), no redis baseline: %v", err)
	}
	// redis-server has no --port 0: take a free port from the kernel and
	// hand it over (another process could grab it in between; then the
	// wait below fails loudly).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := tb.TempDir()
	sock = filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--dir", dir, "--unixsocket", sock, "--unixsocketperm", "700",
		"--logfile", filepath.Join(dir, "redis.log"))
	cmd.Args = append(cmd.Args, extra...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialRedis(addr)
		if err == nil {
			err = c.ping()
			c.close()
			if err == nil {
				return addr, sock, cmd.Process.Pid
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redis-server on %s does not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// respConn is one RESP connection. It is not safe for concurrent use.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dialRedis(addr string) (*respConn, error) {
	network := "tcp"
	if filepath.IsAbs(addr) {
		network = "unix" // a socket's path
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial redis: %w", err)
	}
	return &respConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10)}, nil
}

func (r *respConn) close() error { return r.c.Close() }

// errRESP is a reply that is not what the command expects.
var errRESP = errors.New("bench: unexpected RESP reply")

// command writes one command as an array of bulk strings and flushes.
func (r *respConn) command(args ...[]byte) error {
	fmt.Fprintf(r.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(r.w, "$%d\r\n", len(a))
		r.w.Write(a)
		r.w.WriteString("\r\n")
	}
	if err := r.w.Flush(); err != nil {
		return fmt.Errorf("send to redis: %w", err)
	}
	return nil
}

// line reads one reply line without its CRLF.
func (r *respConn) line() ([]byte, error) {
	l, err := r.r.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("read from redis: %w", err)
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return nil, fmt.Errorf("line %q: %w", l, errRESP)
	}
	l = l[:len(l)-2]
	if l[0] == '-' {
		return nil, fmt.Errorf("redis: %s: %w", l[1:], errRESP)
	}
	return l, nil
}

// status reads a simple-string reply and checks it is want.
func (r *respConn) status(want string) error {
	l, err := r.line()
	if err != nil {
		return err
	}
	if l[0] != '+' || string(l[1:]) != want {
		return fmt.Errorf("reply %q, want +%s: %w", l, want, errRESP)
	}
	return nil
}

func (r *respConn) ping() error {
	if err := r.command([]byte("PING")); err != nil {
		return err
	}
	return r.status("PONG")
}

var cmdSet, cmdGet = []byte("SET"), []byte("GET")

// set stores val at key.
func (r *respConn) set(key, val []byte) error {
	if err := r.command(cmdSet, key, val); err != nil {
		return err
	}
	return r.status("OK")
}

// get returns key's value in a fresh slice (as a Go client returns a
// fresh string), or an error wrapping errRESP when it has none.
func (r *respConn) get(key []byte) ([]byte, error) {
	if err := r.command(cmdGet, key); err != nil {
		return nil, err
	}
	l, err := r.line()
	if err != nil {
		return nil, err
	}
	if l[0] != '$' {
		return nil, fmt.Errorf("reply %q to GET: %w", l, errRESP)
	}
	n, err := strconv.Atoi(string(l[1:]))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("bulk length %q (no such key?): %w", l[1:], errRESP)
	}
	val := make([]byte, n+2)
	if _, err := io.ReadFull(r.r, val); err != nil {
		return nil, fmt.Errorf("read from redis: %w", err)
	}
	if !bytes.HasSuffix(val, []byte("\r\n")) {
		return nil, fmt.Errorf("bulk string without CRLF: %w", errRESP)
	}
	return val[:n:n], nil
}

// TestRedisRESP checks the RESP client against a real redis-server, so the
// baseline's numbers come from correct requests. It skips without
// redis-server.
func TestRedisRESP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server")
	}
	addr, _ := startRedis(t)
	c, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for _, n := range []int{0, 1, 1 << 10, 1 << 20} {
		val := bytes.Repeat([]byte{byte(n)}, n)
		if n > 0 {
			val[n-1] = 0xAB
		}
		key := []byte(fmt.Sprintf("k%d", n))
		if err := c.set(key, val); err != nil {
			t.Fatalf("set %d bytes: %v", n, err)
		}
		got, err := c.get(key)
		if err != nil {
			t.Fatalf("get %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, val) {
			t.Errorf("get of %d bytes: got %d bytes, want what was set", n, len(got))
		}
	}
	if _, err := c.get([]byte("missing")); !errors.Is(err, errRESP) {
		t.Errorf("get of a missing key: got %v, want errRESP", err)
	}
}
