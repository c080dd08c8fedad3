package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/storage"
)

// serve runs `tq serve` until ctx ends (SIGTERM or SIGINT), then shuts
// down gracefully: stop accepting, finish requests in flight within the
// shutdown timeout, close.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := defaultServeConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (keys as the flags, with _ for -)")
	cfg.flags(fs)
	// A first pass finds --config; the file is loaded, then the flags
	// parsed again so they win over the file.
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath != "" {
		fileCfg := defaultServeConfig()
		if err := fileCfg.loadYAML(*configPath); err != nil {
			return err
		}
		cfg = fileCfg
		fs = flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.String("config", "", "")
		cfg.flags(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if cfg.SocketDir != "" {
		if err := os.MkdirAll(cfg.SocketDir, 0o700); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
	}
	s := &server{cfg: cfg, out: stdout}
	defer s.close()
	if err := s.start(ctx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "tq serve: ready")
	<-ctx.Done()
	fmt.Fprintln(stdout, "tq serve: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return s.shutdown(sctx)
}

type server struct {
	cfg     serveConfig
	out     io.Writer
	ctrl    *controller.Controller
	ctrlSrv *controller.Server
	units   []*runningUnit
	addrs   []string // the controller's addresses
}

type runningUnit struct {
	u   *storage.Unit
	srv *storage.Server
	mem *storage.Membership
}

func (s *server) start(ctx context.Context) error {
	if s.cfg.Role != "unit" {
		if err := s.startController(); err != nil {
			return err
		}
	}
	switch s.cfg.Role {
	case "all":
		for range s.cfg.Units {
			if err := s.startUnit(ctx, s.addrs[0]); err != nil {
				return err
			}
		}
	case "unit":
		if err := s.startUnit(ctx, s.cfg.Controller); err != nil {
			return err
		}
	}
	return nil
}

// listen opens a TCP listener and a unix socket; either may be off.
func (s *server) listen(tcpAddr, sockPath string) ([]net.Listener, []string, error) {
	var ls []net.Listener
	var addrs []string
	if sockPath != "" {
		removeStaleSocket(sockPath)
		l, err := net.Listen("unix", sockPath)
		if err != nil {
			return nil, nil, err
		}
		os.Chmod(sockPath, 0o600)
		ls, addrs = append(ls, l), append(addrs, "unix://"+sockPath)
	}
	if tcpAddr != "" {
		l, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, nil, err
		}
		ls, addrs = append(ls, l), append(addrs, "tcp://"+l.Addr().String())
	}
	return ls, addrs, nil
}

// removeStaleSocket deletes a unix socket left by a process that died,
// but never one something still listens on.
func removeStaleSocket(path string) {
	if c, err := net.DialTimeout("unix", path, 100*time.Millisecond); err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}

func (s *server) startController() error {
	smp, err := s.cfg.sampler()
	if err != nil {
		return err
	}
	ctrl, err := controller.New(controller.Config{PreAlloc: s.cfg.PreAlloc, Sampler: smp})
	if err != nil {
		return err
	}
	s.ctrl = ctrl
	s.ctrlSrv = controller.NewServer(ctrl, controller.ServerConfig{
		Token:             s.cfg.Token,
		HeartbeatInterval: s.cfg.HeartbeatInterval,
		Name:              s.cfg.Name,
	})
	sock := s.cfg.Socket
	if sock == "" && s.cfg.SocketDir != "" {
		sock = filepath.Join(s.cfg.SocketDir, "controller.sock")
	}
	ls, addrs, err := s.listen(s.cfg.Listen, sock)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	for _, l := range ls {
		go s.ctrlSrv.Serve(l)
	}
	s.addrs = addrs
	fmt.Fprintf(s.out, "tq serve: controller on %s\n", strings.Join(addrs, " "))
	return nil
}

func (s *server) startUnit(ctx context.Context, controllerAddr string) error {
	jcfg := storage.JoinConfig{Token: s.cfg.Token, Name: s.cfg.Name}
	scfg := storage.DefaultConfig()
	scfg.Capacity = int64(s.cfg.Capacity)
	scfg.HugePages = s.cfg.HugePages
	// The unit exists before it registers: its incarnation is drawn here.
	u, err := storage.NewUnit(0, scfg)
	if err != nil {
		return fmt.Errorf("storage unit: %w", err)
	}
	id, err := storage.AssignID(ctx, controllerAddr, u, jcfg)
	if err != nil {
		u.Close()
		return fmt.Errorf("storage unit: ask %s for an id: %w", controllerAddr, err)
	}
	ru := &runningUnit{u: u, srv: storage.NewServer(u, storage.ServerConfig{Token: s.cfg.Token, Name: s.cfg.Name})}
	s.units = append(s.units, ru)
	sock := ""
	if s.cfg.SocketDir != "" {
		sock = filepath.Join(s.cfg.SocketDir, fmt.Sprintf("unit-%d.sock", id))
	}
	ls, addrs, err := s.listen(s.cfg.UnitListen, sock)
	if err != nil {
		return fmt.Errorf("storage unit %d: %w", id, err)
	}
	for _, l := range ls {
		go ru.srv.Serve(l)
	}
	if sock != "" {
		// The fd socket hands the unit's memfd segments to clients on this
		// host (transport/shm).
		fdSock := sock + ".shm"
		removeStaleSocket(fdSock)
		fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: fdSock, Net: "unix"})
		if err != nil {
			return fmt.Errorf("storage unit %d: fd socket: %w", id, err)
		}
		os.Chmod(fdSock, 0o600)
		ru.srv.RegisterShm(fl) // before a client can ask for it
		go ru.srv.ServeShm(fl)
		addrs = append(addrs, "shm://"+fdSock)
	}
	jcfg.Addrs = addrs
	if ru.mem, err = storage.Join(ctx, controllerAddr, u, jcfg); err != nil {
		return fmt.Errorf("storage unit %d: join %s: %w", id, controllerAddr, err)
	}
	st := u.Stats()
	fmt.Fprintf(s.out, "tq serve: storage unit %d (%s, %s pages) on %s\n", id, bytesString(st.Capacity), bytesString(st.PageSize), strings.Join(addrs, " "))
	return nil
}

func (s *server) shutdown(ctx context.Context) error {
	var errs []error
	for _, ru := range s.units {
		if ru.mem != nil {
			errs = append(errs, ru.mem.Close())
		}
		errs = append(errs, ru.srv.Shutdown(ctx))
	}
	if s.ctrlSrv != nil {
		errs = append(errs, s.ctrlSrv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

func (s *server) close() {
	for _, ru := range s.units {
		if ru.mem != nil {
			ru.mem.Close()
		}
		ru.srv.Close()
		ru.u.Close()
	}
	if s.ctrlSrv != nil {
		s.ctrlSrv.Close()
	}
	if s.ctrl != nil {
		s.ctrl.Close()
	}
}
