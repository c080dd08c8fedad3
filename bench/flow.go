package bench

// The reference flow between processes. The driver (a `go test -bench`
// process or `tq bench`) runs the servers — a controller and one storage
// unit that serves TCP, a unix socket and shared memory — and starts a
// writer and a reader, each this binary re-executed (see proc.go). One
// iteration:
//
//	writer  PUT       kv batch put of the workload                (timed)
//	reader  LIST      the partition's keys, checked                (untimed)
//	reader  GET       kv batch get: views over shm, else a copy    (timed, checksum verified)
//	reader  GET_COPY  kv batch get into a reused caller buffer     (timed, checksum verified)
//	reader  CLEAR     the keys                                     (untimed)
//	writer  memcpy    copy() of the same bytes into prefaulted memory  (baseline)
//	writer→reader     the same bytes over a plain TCP stream, then a unix stream (baselines)
//
// The baselines run between the same two processes in the same iteration
// as the operations they are compared with, so a noisy machine moves both.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/rdma"
)

// Transports returns the named transports: "all" is shm, tcp, unix and
// rdma. "unix" is TQ's stream transport over the unit's unix socket.
func Transports(name string) ([]string, error) {
	switch name {
	case "shm", "tcp", "unix", "rdma":
		return []string{name}, nil
	case "all":
		return []string{"shm", "tcp", "unix", "rdma"}, nil
	}
	return nil, fmt.Errorf("transport %q (want shm, tcp, unix, rdma or all): %w", name, engine.ErrInvalid)
}

// Available reports whether this host and build can run a transport: nil,
// or an error wrapping [engine.ErrNotSupported] that says why not.
func Available(transport string) error {
	switch transport {
	case "shm", "tcp", "unix":
		return nil
	case "rdma":
		if !rdma.Supported {
			return notAvailable("rdma: not available on this host (this build has no RDMA transport)")
		}
		name, _ := RDMADevice()
		dev, err := rdma.OpenDevice(name)
		if err != nil {
			return notAvailable(fmt.Sprintf("rdma: not available on this host (%v)", err))
		}
		dev.Close()
		return nil
	}
	return fmt.Errorf("transport %q: %w", transport, engine.ErrInvalid)
}

// RDMADeviceEnv names the RDMA device the bench's unit and clients use
// (its children inherit it); unset, the first hardware device, else the
// emulated device emu0.
const RDMADeviceEnv = "TQ_BENCH_RDMA_DEVICE"

// RDMADevice is the device "rdma" runs on, and whether it is emulated.
func RDMADevice() (name string, emulated bool) {
	if name = os.Getenv(RDMADeviceEnv); name != "" {
		return name, strings.HasPrefix(name, "emu")
	}
	devs, _ := rdma.Devices()
	if name, err := rdma.PickDevice(devs, -1); err == nil {
		return name, false
	}
	return "emu0", true
}

// rdmaLabel is how results name the rdma transport: with the device, and
// marked when it is the emulated one.
func rdmaLabel() string {
	name, emulated := RDMADevice()
	if emulated {
		return "rdma (emulated " + name + ")"
	}
	return "rdma (" + name + ")"
}

// notAvailable is a transport this host cannot run; it reads as itself
// and matches [engine.ErrNotSupported].
type notAvailable string

func (e notAvailable) Error() string { return string(e) }
func (e notAvailable) Unwrap() error { return engine.ErrNotSupported }

// Server is a controller and one storage unit running in this process,
// reachable over TCP, a unix socket and shared memory, all of them behind
// a fresh token ([Server.Token]). Close it when done.
type Server struct {
	token string
	ctrl  *controller.Controller
	cs    *controller.Server
	unit  *storage.Unit
	us    *storage.Server
	// rdma and rdmaDev serve the unit over RDMA (ServerConfig.RDMADevice).
	rdma    *rdma.Target
	rdmaDev *rdma.Device
	mem     *storage.Membership
	dir     string
	addr    string
	wg      sync.WaitGroup
}

// ServerConfig configures [StartServer].
type ServerConfig struct {
	// Capacity is the storage unit's, in bytes.
	Capacity int64
	// Log is the controller's metadata log: "" or "off" keeps its state
	// in memory; "batch", "always" or "never" keeps a durable log (see
	// tq serve --fsync) in the server's temporary directory.
	Log string
	// RDMADevice, when set, serves the unit over RDMA on it too.
	RDMADevice string
}

// StartServer starts a controller and a storage unit.
func StartServer(ctx context.Context, sc ServerConfig) (s *Server, err error) {
	s = &Server{}
	srv := s // the returns below set s to nil
	defer func() {
		if err != nil {
			srv.Close()
		}
	}()
	removeStaleDirs()
	if s.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid())); err != nil {
		return nil, err
	}
	if s.token, err = auth.NewToken(); err != nil {
		return nil, err
	}
	ccfg := controller.DefaultConfig()
	if sc.Log != "" && sc.Log != "off" {
		if ccfg.Fsync, err = journal.ParseFsync(sc.Log); err != nil {
			return nil, fmt.Errorf("log %q (want off, batch, always or never): %w", sc.Log, err)
		}
		ccfg.Dir = filepath.Join(s.dir, "controller")
	}
	if s.ctrl, err = controller.New(ccfg); err != nil {
		return nil, err
	}
	s.cs = controller.NewServer(s.ctrl, controller.ServerConfig{Name: "bench", Token: s.token})
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.wg.Go(func() { s.cs.Serve(cl) })
	s.addr = "tcp://" + cl.Addr().String()

	cfg := storage.DefaultConfig()
	cfg.Capacity = sc.Capacity
	if s.unit, err = storage.NewUnit(0, cfg); err != nil {
		return nil, err
	}
	if _, err = storage.AssignID(ctx, s.addr, s.unit, storage.JoinConfig{Token: s.token}); err != nil {
		return nil, err
	}
	scfg := storage.ServerConfig{Name: "bench", Token: s.token}
	addrs := []string{}
	if sc.RDMADevice != "" {
		if s.rdmaDev, err = rdma.OpenDevice(sc.RDMADevice); err != nil {
			return nil, err
		}
		s.rdma = rdma.NewTarget(s.rdmaDev)
		scfg.RDMA = s.rdma
		addrs = append(addrs, "rdma://"+sc.RDMADevice)
	}
	s.us = storage.NewServer(s.unit, scfg)
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.wg.Go(func() { s.us.Serve(ul) })
	sock := filepath.Join(s.dir, "unit.sock")
	xl, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	s.wg.Go(func() { s.us.Serve(xl) })
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock + ".shm", Net: "unix"})
	if err != nil {
		return nil, err
	}
	s.us.RegisterShm(fl)
	s.wg.Go(func() { s.us.ServeShm(fl) })
	s.mem, err = storage.Join(ctx, s.addr, s.unit, storage.JoinConfig{Token: s.token, Addrs: append([]string{
		"tcp://" + ul.Addr().String(), "unix://" + sock, "shm://" + sock + ".shm"}, addrs...)})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// dirPrefix names the server's socket directories: dirPrefix, its pid, a
// dash and a random suffix.
const dirPrefix = "tq-benchflow-"

// removeStaleDirs removes the socket directories of servers whose process
// is gone (a driver killed with SIGKILL cannot remove its own).
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		pid, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || n <= 0 {
			continue
		}
		if err := syscall.Kill(n, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// Addr returns the controller's address.
func (s *Server) Addr() string { return s.addr }

// Token returns the token the servers ask every client for.
func (s *Server) Token() string { return s.token }

// Close stops the servers and removes their sockets.
func (s *Server) Close() error {
	var errs []error
	if s.mem != nil {
		errs = append(errs, s.mem.Close())
	}
	if s.us != nil {
		errs = append(errs, s.us.Close())
	}
	if s.cs != nil {
		errs = append(errs, s.cs.Close())
	}
	s.wg.Wait()
	if s.unit != nil {
		errs = append(errs, s.unit.Close())
	}
	if s.rdma != nil {
		errs = append(errs, s.rdma.Close())
	}
	if s.rdmaDev != nil {
		errs = append(errs, s.rdmaDev.Close())
	}
	if s.ctrl != nil {
		errs = append(errs, s.ctrl.Close())
	}
	if s.dir != "" {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}

// SessionConfig says what a [Session] runs.
type SessionConfig struct {
	Controller string // the controller's address ([Server.Addr])
	Token      string // its token ([Server.Token]); empty: as client.Connect finds one
	Transport  string // shm, tcp or unix
	Workload   Workload
	Case       string
	// Exe is the binary the writer and reader run (default: this one,
	// os.Executable); Args are its arguments. The binary must call
	// [ChildMain] first thing.
	Exe  string
	Args []string
}

// Session is a writer and a reader process running one workload over one
// transport. It is not safe for concurrent use.
type Session struct {
	cfg            SessionConfig
	writer, reader *proc
	sum            uint64
	bytes          int64
	stop           func() bool
}

// StartSession starts the writer and the reader. The writer builds the
// workload before StartSession returns. Close the session when done; if
// ctx ends first the processes are killed.
func StartSession(ctx context.Context, cfg SessionConfig) (s *Session, err error) {
	if err := Available(cfg.Transport); err != nil {
		return nil, err
	}
	if cfg.Exe == "" {
		if cfg.Exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	s = &Session{cfg: cfg, bytes: cfg.Workload.Bytes(cfg.Case)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	cc := childConfig{Controller: cfg.Controller, Token: cfg.Token, Transport: cfg.Transport, Workload: cfg.Workload, Case: cfg.Case}
	var ready flowResp
	if s.writer, ready, err = startProc(cfg.Exe, cfg.Args, roleWriter, cc); err != nil {
		return nil, err
	}
	s.sum = ready.Sum
	s.stop = context.AfterFunc(ctx, func() {
		s.writer.kill()
		if s.reader != nil {
			s.reader.kill()
		}
	})
	if s.reader, ready, err = startProc(cfg.Exe, cfg.Args, roleReader, cc); err != nil {
		return nil, err
	}
	// The stream baselines' connections, writer to reader.
	if err := s.reader.send(flowReq{Op: "accept"}); err != nil {
		return nil, err
	}
	if _, err := s.writer.call(flowReq{Op: "dial", Addr: ready.TCP, Unix: ready.Unix}); err != nil {
		return nil, err
	}
	if _, err := s.reader.recv(); err != nil {
		return nil, err
	}
	return s, nil
}

// Bytes returns the payload bytes of one put.
func (s *Session) Bytes() int64 { return s.bytes }

// Sample is one iteration's times.
type Sample struct {
	Put, Get, GetCopy             time.Duration
	Memcpy, TCPStream, UnixStream time.Duration
}

// Iterate runs one iteration of the flow and its baselines. A get whose
// bytes do not match what was put is an error wrapping errChecksum.
func (s *Session) Iterate(ctx context.Context) (Sample, error) {
	var sm Sample
	step := func(p *proc, op string, into *time.Duration) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := p.call(flowReq{Op: op, Sum: s.sum})
		if err != nil {
			return err
		}
		if into != nil {
			*into = time.Duration(r.Ns)
		}
		return nil
	}
	steps := []struct {
		p    *proc
		op   string
		into *time.Duration
	}{
		{s.writer, "put", &sm.Put},
		{s.reader, "list", nil},
		{s.reader, "get", &sm.Get},
		{s.reader, "get_copy", &sm.GetCopy},
		{s.reader, "clear", nil},
		{s.writer, "memcpy", &sm.Memcpy},
	}
	for _, st := range steps {
		if err := step(st.p, st.op, st.into); err != nil {
			return sm, err
		}
	}
	for _, n := range []struct {
		net  string
		into *time.Duration
	}{{"tcp", &sm.TCPStream}, {"unix", &sm.UnixStream}} {
		if err := s.reader.send(flowReq{Op: "recv", Net: n.net}); err != nil {
			return sm, err
		}
		r, err := s.writer.call(flowReq{Op: "send", Net: n.net})
		if err != nil {
			s.reader.kill() // it waits for bytes that will not come
			return sm, err
		}
		if _, err := s.reader.recv(); err != nil {
			return sm, err
		}
		*n.into = time.Duration(r.Ns)
	}
	return sm, nil
}

// Close ends both processes and waits for them.
func (s *Session) Close() error {
	if s.stop != nil {
		s.stop()
	}
	ps := []*proc{s.reader, s.writer}
	for _, p := range ps {
		if p != nil {
			p.stdin.Close() // both at once, then wait for both
		}
	}
	for _, p := range ps {
		if p != nil {
			p.wait()
		}
	}
	return nil
}
