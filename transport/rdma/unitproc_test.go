package rdma

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/engine/enginetest"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// A storage unit serving RDMA in a process of its own: the test binary run
// again with unitProcEnv set. It prints its address and incarnation, then
// serves until its stdin closes (or it is killed).
const unitProcEnv = "TQ_RDMA_TEST_UNIT"

// unitNetnsEnv and unitListenEnv put the unit processes a test starts in
// a network namespace, listening on an address there.
const (
	unitNetnsEnv  = "TQ_RDMA_TEST_UNIT_NETNS"
	unitListenEnv = "TQ_RDMA_TEST_UNIT_LISTEN"
)

func runUnitProc() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "unit process:", err)
		return 1
	}
	dev, err := OpenDevice(os.Getenv(unitProcEnv))
	if err != nil {
		return fail(err)
	}
	defer dev.Close()
	tgt := NewTarget(dev)
	defer tgt.Close()
	ucfg := unitConfig()
	if c := os.Getenv("TQ_RDMA_TEST_CAPACITY"); c != "" {
		fmt.Sscan(c, &ucfg.Capacity)
	}
	u, err := storage.NewUnit(7, ucfg)
	if err != nil {
		return fail(err)
	}
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{RDMA: tgt})
	defer srv.Close()
	l, err := net.Listen("tcp", os.Getenv("TQ_RDMA_TEST_LISTEN"))
	if err != nil {
		return fail(err)
	}
	go srv.Serve(l)
	fmt.Printf("%s %d\n", wire.FormatAddr("tcp", l.Addr().String()), u.Incarnation())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// unitConfig is a unit big enough for the conformance suite.
func unitConfig() storage.Config {
	cfg := storage.DefaultConfig()
	cfg.Capacity = 2 * enginetest.MinCapacity
	cfg.SegmentSize = 16 << 20
	return cfg
}

type unitProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	addr string
	inc  uint64
}

// startUnitProc starts a unit process on device dev, listening on listen
// ("127.0.0.1:0" when empty); the test's cleanup stops it.
func startUnitProc(t testing.TB, dev, listen string) *unitProc {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if ns := os.Getenv(unitNetnsEnv); ns != "" {
		// The unit on another "host": a network namespace of its own.
		cmd = exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$")
		if l := os.Getenv(unitListenEnv); l != "" && listen == "127.0.0.1:0" {
			listen = l
		}
	}
	cmd.Env = append(os.Environ(), unitProcEnv+"="+dev, "TQ_RDMA_TEST_LISTEN="+listen)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &unitProc{cmd: cmd, in: in}
	t.Cleanup(p.stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("unit process: %v", err)
	}
	if _, err := fmt.Sscan(strings.TrimSpace(line), &p.addr, &p.inc); err != nil {
		t.Fatalf("unit process said %q: %v", line, err)
	}
	return p
}

// stop ends the process cleanly (stdin closed), or kills it after 5 s.
func (p *unitProc) stop() {
	p.in.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

// kill kills the process with SIGKILL.
func (p *unitProc) kill() {
	p.cmd.Process.Kill()
}

// clientProcEnv makes the test binary a client that puts 32 MiB extents
// to the unit at that address over RDMA, forever, printing "putting" once
// it is connected.
const clientProcEnv = "TQ_RDMA_TEST_CLIENT"

func runClientProc() int {
	tr := New(Config{Device: "emu0"})
	defer tr.Close()
	ctx := context.Background()
	c, err := tr.DialConn(ctx, engine.PeerInfo{Addr: os.Getenv(clientProcEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client process:", err)
		return 1
	}
	buf := make([]byte, 32<<20)
	fmt.Println("putting")
	for {
		addrs, err := c.Write(ctx, [][][]byte{{buf}})
		if err != nil {
			fmt.Fprintln(os.Stderr, "client process:", err)
			return 1
		}
		c.Free(ctx, addrs)
	}
}
