package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/hostid"
	tqmetrics "github.com/tqgo/tq/metrics"
	"github.com/tqgo/tq/resp"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/rdma"
	"github.com/tqgo/tq/transport/tcp"
	"github.com/tqgo/tq/wire"
)

// serve runs `tq serve` until ctx ends (SIGTERM or SIGINT), then shuts
// down gracefully: stop accepting, finish requests in flight within the
// shutdown timeout, close. With --check-config it only reports the
// configuration (see checkConfig).
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var flagOut bytes.Buffer
	cfg, once, err := parseServeConfig(args, &flagOut)
	if err = flagOutputTo(flagOut.Bytes(), err, stdout, stderr); err != nil {
		return err
	}
	if err := hostid.Check(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if once.checkConfig {
		return cfg.checkConfig(stdout, stderr)
	}
	if err := cfg.checkMemory(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := cfg.secure(); err != nil {
		return err
	}
	if cfg.Insecure {
		fmt.Fprintln(stderr, "tq serve: WARNING: --insecure: no token; any local user (and, beyond loopback, anyone on the network) can read, overwrite and wipe the data")
	} else {
		fmt.Fprintf(stdout, "tq serve: token from %s\n", cfg.tokenFrom)
	}
	cfg.warnMetricsExposed(stderr)
	// Every TCP address is bound before the controller's state is made
	// or a unit registers: one that cannot be (a port another process
	// holds, a host not of this machine) fails the start naming its
	// flag, having made nothing.
	bound, err := cfg.bindTCP()
	if err != nil {
		return err
	}
	defer bound.close()                                      // after s.close: those not served yet
	log, _ := newLogger(stderr, cfg.LogFormat, cfg.LogLevel) // validated
	s := &server{cfg: cfg, out: stdout, log: log, restoreForce: once.restoreForce, bound: bound}
	stopping := false
	defer func() {
		err = errors.Join(err, s.close())
		if stopping && err != nil {
			// Everything was closed all the same; the status tells a
			// supervisor that some of it failed (the shutdown's snapshot
			// not written, say), apart from a start that failed (2).
			err = exitStatus{1, fmt.Errorf("shutdown incomplete: %w", err)}
		}
	}()
	if err := s.startMetrics(); err != nil {
		return err
	}
	if err := s.startPprof(); err != nil {
		return err
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	if err := s.restore(ctx); err != nil {
		return err
	}
	if err := s.serveKV(); err != nil {
		return err
	}
	if err := s.startRESP(); err != nil {
		return err
	}
	s.state.Store(stateServing)
	fmt.Fprintln(stdout, "tq serve: ready")
	<-ctx.Done()
	s.state.Store(stateStopping)
	stopping = true
	fmt.Fprintln(stdout, "tq serve: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return s.shutdown(sctx)
}

// serveOnce is what `tq serve` is asked to do this time, beside its
// configuration: flags with no config file key.
type serveOnce struct {
	checkConfig  bool // --check-config
	restoreForce bool // --restore-force
}

// parseServeConfig reads `tq serve`'s flags and --config file (the flags
// win) and validates the result.
func parseServeConfig(args []string, stderr io.Writer) (cfg serveConfig, once serveOnce, err error) {
	cfg = defaultServeConfig()
	parse := func(c *serveConfig) (configPath string, once serveOnce, err error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.StringVar(&configPath, "config", "", "YAML config file (keys as the flags, with _ for -)")
		fs.BoolVar(&once.checkConfig, "check-config", false, "check the flags and the --config file, print the resulting configuration as YAML (a --config file; the token left out) and exit, starting nothing and creating no file or directory")
		// Not a config key: it is meant for one start, not for every
		// restart (see restore).
		fs.BoolVar(&once.restoreForce, "restore-force", false, "load --restore's checkpoint even when the controller recovers partitions from its data directory, replacing them (without it, --restore loads only into a controller that holds none); give it for one start")
		c.flags(fs)
		// --heartbeat is --heartbeat-interval's other spelling, with no
		// config key of its own: its own variable, so that both given
		// with different values are refused rather than the last taken.
		heartbeat := c.HeartbeatInterval
		durationVar(fs, &heartbeat, "heartbeat", heartbeat, "the same as --heartbeat-interval, a `duration` (give one of the two)")
		if err := fs.Parse(args); err != nil {
			return "", once, err
		}
		if fs.NArg() > 0 {
			return "", once, fmt.Errorf("serve takes flags only, no arguments: unexpected %q", fs.Arg(0))
		}
		// Two of a flag on the command line are refused (the flag
		// package keeps the last); a --config key or a $TQ_ variable
		// under a flag is a layer the flag overrides, not a repeat.
		if err := refuseRepeats(fs, args); err != nil {
			return "", once, err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["token"] {
			c.tokenInFile = false // the flag wins over the file's key
		}
		if set["heartbeat"] {
			if set["heartbeat-interval"] && heartbeat != c.HeartbeatInterval {
				return "", once, fmt.Errorf("invalid configuration:\n--heartbeat-interval %v and --heartbeat %v: two spellings of one setting with different values: give one", c.HeartbeatInterval, heartbeat)
			}
			c.HeartbeatInterval = heartbeat
		}
		return configPath, once, nil
	}
	// A first pass finds --config; the file is loaded, then the flags
	// parsed again so they win over the file.
	configPath, once, err := parse(&cfg)
	if err != nil {
		return cfg, once, err
	}
	if configPath != "" {
		cfg = defaultServeConfig()
		if err := cfg.loadYAML(configPath); err != nil {
			return cfg, once, err
		}
		cfg.tokenInFile = cfg.Token != ""
		if _, _, err := parse(&cfg); err != nil {
			return cfg, once, err
		}
	}
	if err := cfg.validate(); err != nil {
		return cfg, once, fmt.Errorf("invalid configuration:\n%w", err)
	}
	// The units' and the controller's unix socket paths are given out to
	// clients, which would resolve a relative one against their own
	// working directory.
	for _, p := range []struct {
		name string
		path *string
	}{{"--socket-dir", &cfg.SocketDir}, {"--socket", &cfg.Socket}} {
		if *p.path == "" {
			continue
		}
		abs, err := filepath.Abs(*p.path)
		if err != nil {
			return cfg, once, fmt.Errorf("invalid configuration:\n%s %q: %w", p.name, *p.path, err)
		}
		*p.path = abs
	}
	if err := cfg.checkSocketPaths(); err != nil {
		return cfg, once, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if once.restoreForce && cfg.Restore == "" {
		return cfg, once, errors.New("invalid configuration:\n--restore-force needs --restore")
	}
	return cfg, once, nil
}

// warnMetricsExposed says on w, at start and with --check-config, that
// --metrics listens beyond this host without a token (allowed).
func (c *serveConfig) warnMetricsExposed(w io.Writer) {
	if c.metricsExposed() {
		fmt.Fprintf(w, "tq serve: WARNING: --metrics %s listens beyond this host without a token: whoever reaches it reads partition, task and field names (set --metrics-token-file or $%s)\n", c.Metrics, envMetricsToken)
	}
}

// checkConfig prints what --check-config promises: a comment naming
// where the token would come from, then the configuration as YAML that
// --config reads back to the same configuration, less the token.
// Deployment recipes are checked with it (deploy/k8s). It refuses what
// the start's checkExposure refuses, and warns on stderr as the start
// does, reading no token: the token is the one tokenSource names (there
// always is one, but with --insecure), and --metrics-token-file, when
// named, is taken to hold one (the start refuses to go on without).
func (c serveConfig) checkConfig(stdout, stderr io.Writer) error {
	from := c.tokenSource()
	if from == "" {
		from = "none (--insecure)"
	}
	exp := c
	if !c.Insecure && exp.Token == "" {
		exp.Token = "(from " + from + ")" // stands for it; never printed
	}
	exp.metricsToken = os.Getenv(envMetricsToken)
	if c.MetricsTokenFile != "" {
		exp.metricsToken = "(from --metrics-token-file)"
	}
	if err := exp.checkExposure(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	exp.warnMetricsExposed(stderr)
	c.Token = ""
	b, err := yaml.Marshal(&c)
	if err != nil {
		return fmt.Errorf("--check-config: %w", err)
	}
	fmt.Fprintf(stdout, "# tq serve: configuration ok; token from %s\n%s", from, b)
	return nil
}

// checkMemory refuses a --capacity this process cannot hold: the storage
// units of this process together past its physical memory (sysinfo's
// totalram) or past its cgroup's memory limit (a container's: memory.max,
// or memory.limit_in_bytes under cgroup v1; the lowest on the way to the
// root). A unit maps its arena as data comes, so such a capacity started,
// was registered with the controller (placement counts on it), and once
// the data outgrew memory the unit was killed (out of memory) rather than
// refusing a put. It runs at start, not with --check-config, which checks
// a configuration meant for any host (deploy/k8s's, on the machine that
// checks it).
func (c *serveConfig) checkMemory() error {
	if c.Role == "controller" {
		return nil
	}
	units := 1
	if c.Role == "all" {
		units = c.Units
	}
	total, what := memoryLimit()
	if total == 0 || total > math.MaxInt64 || units < 1 || int64(c.Capacity) <= int64(total)/int64(units) {
		return nil
	}
	if units == 1 {
		return fmt.Errorf("--capacity %v: more than %s (%s): a storage unit maps its arena as data comes, and past memory it would be killed (out of memory) rather than refuse a put: give at most %s",
			c.Capacity, what, bytesString(int64(total)), bytesString(int64(total)))
	}
	return fmt.Errorf("--capacity %v with --units %d: %d storage units of that capacity are more than %s (%s): a unit maps its arena as data comes, and past memory it would be killed (out of memory) rather than refuse a put: give at most %s per unit",
		c.Capacity, units, units, what, bytesString(int64(total)), bytesString(int64(total)/int64(units)))
}

// memoryLimit returns the memory this process may use, and what limits
// it: the host's physical memory, or its cgroup's limit when lower (0:
// cannot tell; the kernel says so later, as before).
func memoryLimit() (uint64, string) {
	var si unix.Sysinfo_t
	var total uint64
	if unix.Sysinfo(&si) == nil {
		total = si.Totalram * uint64(si.Unit)
	}
	// An error is no cgroup, no limit, or none readable: the host's.
	if limit, err := memlimit.FromCgroup(); err == nil && limit > 0 && (total == 0 || limit < total) {
		return limit, "this process's cgroup memory limit (a container's)"
	}
	return total, "this host's memory"
}

// tokenSource says where secure takes the token from — --token or the
// --config file's token key, else $TQ_TOKEN, else the data directory's
// token file; "" with --insecure — touching nothing.
func (c *serveConfig) tokenSource() string {
	switch {
	case c.Insecure:
		return ""
	case c.Token != "" && c.tokenInFile:
		return "the --config file's token key"
	case c.Token != "":
		return "--token"
	case os.Getenv(auth.EnvToken) != "":
		return "$" + auth.EnvToken
	}
	return filepath.Join(c.DataDir, auth.TokenFile)
}

// secure prepares what authentication rests on: private socket and data
// directories (created 0700, refused when another user owns them or may
// write to them) and the token — --token or the --config file's token
// key, else $TQ_TOKEN, else the data directory's token file, created on
// first start — unless --insecure.
func (c *serveConfig) secure() error {
	dirs := []struct{ what, path string }{{"socket directory", c.SocketDir}}
	if c.Socket != "" {
		dirs = append(dirs, struct{ what, path string }{"--socket's directory", filepath.Dir(c.Socket)})
	}
	if c.RESPSocket != "" {
		// Whoever could write there could put a socket of their own in
		// its place and read the token from the AUTH of redis clients.
		dirs = append(dirs, struct{ what, path string }{"--resp-socket's directory", filepath.Dir(c.RESPSocket)})
	}
	if c.needsDataDir() {
		dirs = append(dirs, struct{ what, path string }{"data directory", c.DataDir})
	}
	for _, d := range dirs {
		if d.path == "" {
			continue
		}
		if err := auth.EnsurePrivateDir(d.path); err != nil {
			return fmt.Errorf("%s: %w", d.what, err)
		}
	}
	if c.Role != "unit" {
		for _, d := range []struct{ what, path string }{
			{"the controller's directory", c.controllerDir()},
			{"the checkpoint directory", c.checkpointDir()},
		} {
			if err := checkLinkedDir(d.path); err != nil {
				return fmt.Errorf("%s: %w", d.what, err)
			}
		}
	}
	c.tokenFrom = c.tokenSource()
	switch {
	case c.Insecure, c.Token != "":
	case os.Getenv(auth.EnvToken) != "":
		c.Token = os.Getenv(auth.EnvToken)
	default:
		tok, err := auth.LoadOrCreateToken(c.DataDir)
		if err != nil {
			return fmt.Errorf("token: %w", err)
		}
		c.Token = tok
	}
	switch {
	case c.MetricsTokenFile != "":
		tok, err := auth.ReadTokenFile(c.MetricsTokenFile, "--metrics-token-file")
		if err != nil {
			return err
		}
		c.metricsToken = tok
	default:
		c.metricsToken = os.Getenv(envMetricsToken)
	}
	return c.checkExposure()
}

// checkLinkedDir checks a directory of the data directory (the
// controller's, the checkpoints'): one in it is as private as the data
// directory, whatever its own mode; a symbolic link out of it (to a
// bigger disk, say) must lead to a directory auth.CheckPrivateDir takes,
// or another user could replace the controller's log or plant the
// checkpoint a --restore loads. A missing one is made 0700 when needed.
func checkLinkedDir(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return nil
	}
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("%s is a symbolic link that leads nowhere: %w", path, err)
	}
	if err := auth.CheckPrivateDir(target); err != nil {
		return fmt.Errorf("%s is a symbolic link out of the data directory: %w", path, err)
	}
	return nil
}

type server struct {
	cfg     serveConfig
	bound   *boundTCP // the TCP listeners, bound at start (see bindTCP)
	out     io.Writer
	log     *slog.Logger
	closers []func() error
	ctrl    *controller.Controller
	ctrlSrv *controller.Server
	units   []*runningUnit
	addrs   []string // the controller's addresses, as given out
	local   string   // the controller's address for units of this process
	resp    *resp.Server
	rdmaDev *rdma.Device // --rdma-device, shared by the units

	// held is how many partitions the controller recovered from its data
	// directory at start (0 for a fresh one, or --in-memory): --restore
	// loads only into a controller that held none, unless restoreForce.
	held         int
	restoreForce bool
	// recovered holds the units the controller knew from its data
	// directory at start, with their last heartbeat then (see live).
	recovered map[engine.UnitID]time.Time

	metrics    *tqmetrics.Registry // --metrics; nil without
	metricsURL string
	state      atomic.Int32 // stateStarting, stateServing or stateStopping: see readiness
}

type runningUnit struct {
	u    *storage.Unit
	srv  *storage.Server
	mem  *storage.Membership
	rdma *rdma.Target // nil without --rdma-device
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
			if err := s.startUnit(ctx, s.local); err != nil {
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

// boundTCP holds the TCP listeners of tq serve's flags, bound by
// bindTCP before anything else starts; nil for a flag not set (or not
// used by the role).
type boundTCP struct {
	listen, resp, metrics, pprof net.Listener
	units                        []net.Listener // --unit-listen, one per unit of the process
}

// bindTCP binds every TCP address the role listens on. An address that
// cannot be bound is an error naming its flag and value: it used to be
// found once the controller had opened its log (each failed start
// recorded a start of its own) and, for --resp, once the storage units
// had registered, naming only the address.
func (c *serveConfig) bindTCP() (b *boundTCP, err error) {
	b = &boundTCP{}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	bind := func(l *net.Listener, flag, given, addr string) error {
		if given == "" {
			return nil
		}
		var err error
		if *l, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("%s %q: %w", flag, given, err)
		}
		return nil
	}
	if c.Role != "unit" {
		if err := bind(&b.listen, "--listen", c.Listen, c.Listen); err != nil {
			return b, err
		}
	}
	if c.Role != "controller" && c.UnitListen != "" {
		units := 1
		if c.Role == "all" {
			units = c.Units
		}
		b.units = make([]net.Listener, units)
		for i := range b.units {
			if err := bind(&b.units[i], "--unit-listen", c.UnitListen, c.UnitListen); err != nil {
				return b, err
			}
		}
	}
	if c.Role == "all" {
		if err := bind(&b.resp, "--resp", c.RESP, c.RESP); err != nil {
			return b, err
		}
	}
	for _, m := range []struct {
		l          *net.Listener
		flag, addr string
	}{{&b.metrics, "--metrics", c.Metrics}, {&b.pprof, "--pprof", c.Pprof}} {
		addr, _ := metricsAddr(m.addr) // validated
		if err := bind(m.l, m.flag, m.addr, addr); err != nil {
			return b, err
		}
	}
	return b, nil
}

// close closes the listeners; those a server took are closed already.
func (b *boundTCP) close() {
	for _, l := range append([]net.Listener{b.listen, b.resp, b.metrics, b.pprof}, b.units...) {
		if l != nil {
			l.Close()
		}
	}
}

// listen opens a unix socket and serves tl, the TCP listener bound for
// tcpAddr; either may be off. It returns the listeners, the addresses to
// give out (the TCP one as advertised: see advertised) and one to dial
// from this host (the unix socket's, else the TCP listener's own).
func (s *server) listen(tl net.Listener, tcpAddr, advertise, sockPath string) (ls []net.Listener, addrs []string, local string, err error) {
	defer func() {
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
		}
	}()
	if sockPath != "" {
		if err := removeStaleSocket(sockPath); err != nil {
			return ls, nil, "", err
		}
		l, err := net.Listen("unix", sockPath)
		if err != nil {
			return ls, nil, "", err
		}
		os.Chmod(sockPath, 0o600)
		ls, addrs = append(ls, l), append(addrs, "unix://"+sockPath)
		local = "unix://" + sockPath
	}
	if tl != nil {
		l := tl
		ls = append(ls, l)
		adv, err := systemAddrs.advertised(tcpAddr, l.Addr().(*net.TCPAddr), advertise)
		if err != nil {
			return ls, nil, "", fmt.Errorf("advertise %s: %w", tcpAddr, err)
		}
		addrs = append(addrs, "tcp://"+adv)
		if local == "" {
			local = "tcp://" + l.Addr().String()
		}
	}
	return ls, addrs, local, nil
}

// removeStaleSocket makes way for a unix socket at path: it deletes a
// socket left by a process that died (a dial is refused: nothing listens
// on it), and leaves any other socket (then Listen fails, saying the
// address is in use). Anything else at path (a file, a directory, a
// link) is not ours to delete: an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("%s exists and is not a socket (mode %v): not replacing it", path, fi.Mode())
	}
	c, err := net.DialTimeout("unix", path, 100*time.Millisecond)
	if err == nil {
		c.Close()
		return nil
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

func (s *server) startController() error {
	smp, err := s.cfg.sampler()
	if err != nil {
		return err
	}
	// A unit that misses five heartbeats is reported dead: clients stop
	// writing to it and read its cells as lost.
	ccfg := controller.Config{PreAlloc: s.cfg.PreAlloc, Sampler: smp, Logf: s.logf, UnitTimeout: 5 * s.cfg.HeartbeatInterval, KeptBatchTTL: s.cfg.KeptBatchTTL, HeldFetchTTL: s.cfg.HeldFetchTTL, HeldClientGrace: s.cfg.HeldClientGrace,
		MaxPartitions: s.cfg.MaxPartitions}
	if !s.cfg.InMemory {
		ccfg.Dir = s.cfg.controllerDir()
		ccfg.Fsync, _ = journal.ParseFsync(s.cfg.Fsync) // validated
		if s.metrics != nil {
			ccfg.OnJournalWrite = s.metrics.OnJournalWrite
		}
	}
	ctrl, err := controller.New(ccfg)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.ctrl = ctrl
	s.held = len(ctrl.Partitions()) // before anything is served
	if s.cfg.Restore != "" && (s.held == 0 || s.restoreForce) {
		// A checkpoint that is not there (or that this build cannot
		// load) fails the start before anything listens, not once the
		// units are up (see restore).
		if err := controller.CheckCheckpoint(s.cfg.checkpointDir(), s.cfg.Restore); err != nil {
			return fmt.Errorf("--restore: %w", err)
		}
	}
	if ci := ctrl.Info(); ci.Durable {
		fmt.Fprintf(s.out, "tq serve: controller state in %s (cluster %s, start %d, fsync %s)\n", ccfg.Dir, ci.ClusterID, ci.Epoch, ci.Fsync)
	} else {
		fmt.Fprintf(s.out, "tq serve: controller state in memory only (cluster %s)\n", ci.ClusterID)
	}
	// The controller reaches the units' data planes for checkpoints with
	// data (over their unix sockets on this host, else TCP).
	dataTr := tcp.New(tcp.Config{Token: s.cfg.Token})
	s.closers = append(s.closers, dataTr.Close)
	dial := func(ctx context.Context, u engine.UnitInfo) (engine.DataConn, error) {
		peer, _, ok := client.PickAddr(u, client.HostID())
		if !ok {
			return nil, fmt.Errorf("storage unit %d advertises no address this host can dial: %w", u.ID, engine.ErrUnavailable)
		}
		return dataTr.Dial(ctx, peer)
	}
	// Every listener, loopback included, asks for the token; a unix
	// socket also admits a peer of this user by SO_PEERCRED (it could read
	// the token file anyway).
	sock := s.cfg.Socket
	if sock == "" && s.cfg.SocketDir != "" {
		sock = filepath.Join(s.cfg.SocketDir, "controller.sock")
	}
	var localAddrs []string
	if sock != "" {
		localAddrs = []string{"unix://" + sock} // absolute: see parseServeConfig
	}
	s.ctrlSrv = controller.NewServer(ctrl, controller.ServerConfig{
		LocalAddrs:        localAddrs,
		Token:             s.cfg.Token,
		TrustPeerCred:     true,
		RefuseClearToken:  s.cfg.RefuseClearToken,
		Logger:            s.log,
		HeartbeatInterval: s.cfg.HeartbeatInterval,
		Name:              s.cfg.Name,
		CheckpointDir:     s.cfg.checkpointDir(),
		Dial:              dial,
		Logf:              s.logf,
		Observer:          s.observer(tqmetrics.RoleController),
		MetricsAddrs:      s.metricsAddrs(),
		Loops:             s.cfg.Loops,
		PeerTimeout:       s.cfg.PeerTimeout,
	})
	if s.metrics != nil {
		s.metrics.AddController(ctrl, s.ctrlSrv)
	}
	if s.cfg.Restore != "" {
		// Only units until the checkpoint is in (see restore).
		s.ctrlSrv.HoldClients("restoring checkpoint " + s.cfg.Restore)
	}
	s.noteRecovered() // before any unit can register: see live
	s.watchUnits()
	ls, addrs, local, err := s.listen(s.bound.listen, s.cfg.Listen, s.cfg.Advertise, sock)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	for _, l := range ls {
		go s.ctrlSrv.Serve(l)
	}
	s.addrs, s.local = addrs, local
	fmt.Fprintf(s.out, "tq serve: controller on %s\n", strings.Join(addrs, " "))
	return nil
}

// rdmaDevice opens --rdma-device once for every unit of the process.
func (s *server) rdmaDevice() (*rdma.Device, error) {
	if s.rdmaDev != nil {
		return s.rdmaDev, nil
	}
	dev, err := rdma.OpenDevice(s.cfg.RDMADevice)
	if err != nil {
		return nil, err
	}
	kind := "hardware"
	if dev.Emulated() {
		kind = "emulated"
	}
	fmt.Fprintf(s.out, "tq serve: RDMA device %s (%s)\n", dev.Name(), kind)
	s.rdmaDev = dev
	return dev, nil
}

// assignID asks the controller for the unit's id. A controller that
// cannot be reached yet is asked again, with a backoff, until
// --controller-wait has passed (the last time at its end): units and
// their controller start in any order (a Kubernetes DaemonSet's units
// come up beside a controller still starting, and without this
// crash-looped until it answered). A refusal (a wrong token, say) fails
// at once.
func (s *server) assignID(ctx context.Context, controllerAddr string, u *storage.Unit, jcfg storage.JoinConfig) (engine.UnitID, error) {
	deadline := time.Now().Add(s.cfg.ControllerWait)
	backoff := 100 * time.Millisecond
	for logged := false; ; {
		id, err := storage.AssignID(ctx, controllerAddr, u, jcfg)
		left := time.Until(deadline)
		if err == nil || !errors.Is(err, engine.ErrUnavailable) || left <= 0 {
			if err != nil && logged {
				err = fmt.Errorf("still unreachable after --controller-wait %v: %w", s.cfg.ControllerWait, err)
			}
			return id, err
		}
		if !logged {
			s.log.Warn("controller not reachable yet; trying again", "controller", controllerAddr, "for", s.cfg.ControllerWait, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(min(backoff, left)): // the last try at the deadline
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (s *server) startUnit(ctx context.Context, controllerAddr string) error {
	jcfg := storage.JoinConfig{Token: s.cfg.Token, Name: s.cfg.Name, ReconcileInterval: s.cfg.ReconcileInterval, ReconcileGrace: s.cfg.ReconcileGrace}
	scfg := storage.DefaultConfig()
	scfg.Capacity = int64(s.cfg.Capacity)
	scfg.HugePages = s.cfg.HugePages
	// The unit exists before it registers: its incarnation is drawn here.
	u, err := storage.NewUnit(0, scfg)
	if err != nil {
		return fmt.Errorf("storage unit: %w", err)
	}
	id, err := s.assignID(ctx, controllerAddr, u, jcfg)
	if err != nil {
		u.Close()
		if errors.Is(err, wire.ErrUnauthenticated) {
			return fmt.Errorf("storage unit: the controller at %s refused the token from %s (give the unit the controller's token: --token, the --config file's token key, $%s, or its token file in --data-dir): %w",
				controllerAddr, s.cfg.tokenFrom, auth.EnvToken, err)
		}
		return fmt.Errorf("storage unit: ask %s for an id: %w", controllerAddr, err)
	}
	srvCfg := storage.ServerConfig{Token: s.cfg.Token, Name: s.cfg.Name, TrustPeerCred: true, RefuseClearToken: s.cfg.RefuseClearToken, Logger: s.log, Observer: s.observer(tqmetrics.RoleUnit),
		Quarantine: s.cfg.ShmQuarantine, ReserveWait: s.cfg.ReserveWait}
	ru := &runningUnit{u: u}
	var tl net.Listener // --unit-listen's, bound for this unit
	if i := len(s.units); i < len(s.bound.units) {
		tl = s.bound.units[i]
	}
	if s.cfg.RDMADevice != "" {
		dev, err := s.rdmaDevice()
		if err != nil {
			u.Close()
			return fmt.Errorf("storage unit %d: --rdma-device %s: %w", id, s.cfg.RDMADevice, err)
		}
		ru.rdma = rdma.NewTarget(dev)
		srvCfg.RDMA = ru.rdma
	}
	ru.srv = storage.NewServer(u, srvCfg)
	s.units = append(s.units, ru)
	if s.metrics != nil {
		s.metrics.AddUnit(u, ru.srv)
	}
	sock := ""
	if s.cfg.SocketDir != "" {
		sock = filepath.Join(s.cfg.SocketDir, fmt.Sprintf("unit-%d.sock", id))
	}
	// The addresses registered are the ones clients dial: a wildcard
	// listener's is a routable address of this host, never [::] or
	// 0.0.0.0 (see advertised).
	ls, addrs, _, err := s.listen(tl, s.cfg.UnitListen, s.cfg.unitAdvertise(s.cfg.UnitListen), sock)
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
		if err := removeStaleSocket(fdSock); err != nil {
			return fmt.Errorf("storage unit %d: fd socket: %w", id, err)
		}
		fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: fdSock, Net: "unix"})
		if err != nil {
			return fmt.Errorf("storage unit %d: fd socket: %w", id, err)
		}
		os.Chmod(fdSock, 0o600)
		ru.srv.RegisterShm(fl) // before a client can ask for it
		go ru.srv.ServeShm(fl)
		addrs = append(addrs, "shm://"+fdSock)
	}
	if ru.rdma != nil {
		addrs = append(addrs, "rdma://"+s.cfg.RDMADevice)
	}
	if s.metricsURL != "" {
		addrs = append(addrs, s.metricsURL)
	}
	jcfg.Addrs = addrs
	if ru.mem, err = storage.Join(ctx, controllerAddr, u, jcfg); err != nil {
		return fmt.Errorf("storage unit %d: join %s: %w", id, controllerAddr, err)
	}
	st := u.Stats()
	fmt.Fprintf(s.out, "tq serve: storage unit %d (%s, %s pages) on %s\n", id, bytesString(st.Capacity), bytesString(st.PageSize), strings.Join(addrs, " "))
	return nil
}

// serveKV lets the controller take small KV puts and gets with their
// bytes (one round trip for clients) through the units of this process.
func (s *server) serveKV() error {
	if s.ctrlSrv == nil || len(s.units) == 0 {
		return nil
	}
	units := make([]*storage.Unit, len(s.units))
	for i, ru := range s.units {
		units[i] = ru.u
	}
	kv, err := embedded.KVData(s.ctrl, units...)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	s.ctrlSrv.ServeKV(kv)
	return nil
}

// startRESP serves the Redis protocol (--resp) over the controller and
// the storage units of this process, called directly: a command costs
// the endpoint's own round trip and nothing more.
func (s *server) startRESP() error {
	if s.cfg.RESP == "" && s.cfg.RESPSocket == "" {
		return nil
	}
	units := make([]*storage.Unit, len(s.units))
	for i, ru := range s.units {
		units[i] = ru.u
	}
	rs, err := resp.NewServer(s.ctrl, units, resp.Config{Token: s.cfg.Token, Partition: s.cfg.RESPPartition, MaxValue: int64(s.cfg.RESPMaxValue), Loops: s.cfg.RESPLoops, Logger: s.log})
	if err != nil {
		return fmt.Errorf("--resp: %w", err)
	}
	var ls []net.Listener
	var names []string
	if l := s.bound.resp; l != nil {
		ls, names = append(ls, l), append(names, l.Addr().String())
	}
	if s.cfg.RESPSocket != "" {
		// A unix socket costs a command about half of loopback TCP's CPU;
		// like the others it is the user's alone, and asks for AUTH.
		err := removeStaleSocket(s.cfg.RESPSocket)
		var l net.Listener
		if err == nil {
			l, err = net.Listen("unix", s.cfg.RESPSocket)
		}
		if err == nil {
			err = os.Chmod(s.cfg.RESPSocket, 0o600)
		}
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			rs.Close()
			return fmt.Errorf("--resp-socket: %w", err)
		}
		ls, names = append(ls, l), append(names, "unix://"+s.cfg.RESPSocket)
	}
	s.resp = rs
	for i, l := range ls {
		go rs.Serve(l)
		fmt.Fprintf(s.out, "tq serve: Redis protocol on %s (partition %q)\n", names[i], s.cfg.RESPPartition)
	}
	return nil
}

// shutdown stops the servers gracefully, within ctx. The Redis endpoint
// goes first, letting its commands in flight finish. A put from a remote
// client is two steps, its bytes to a storage unit, then its commit to
// the controller; so, with both in this process, the units then stop
// taking new writes (a new put fails with engine.ErrClosed, having
// changed nothing, and can be put again once tq serve is back) while the
// controller serves on, until every put that reserved or wrote on them
// has committed (settlePuts). Then the controller stops, letting its
// requests in flight finish, and the units last, which those requests may
// still need (a checkpoint save reads every cell from them).
func (s *server) shutdown(ctx context.Context) error {
	var errs []error
	if s.resp != nil {
		errs = append(errs, s.resp.Shutdown(ctx))
	}
	if s.ctrlSrv != nil && len(s.units) > 0 {
		for _, ru := range s.units {
			ru.u.StopReserving()
		}
		s.settlePuts(ctx)
	}
	if s.ctrlSrv != nil {
		errs = append(errs, s.ctrlSrv.Shutdown(ctx))
	}
	for _, ru := range s.units {
		if ru.mem != nil {
			errs = append(errs, ru.mem.Close())
		}
		errs = append(errs, ru.srv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// settleIdle is how long settlePuts waits for the next written put to
// commit before it leaves the rest to reconciliation: a live client
// commits a moment after its write returns, so an extent that stays
// unnamed that long is most likely a put whose client died between the
// two steps, and would otherwise hold the shutdown to its end.
const settleIdle = 2 * time.Second

// settlePuts waits for the puts that reserved or wrote on this process's
// units to commit: until the controller names every extent the units
// hold in flight (storage.Unit.Unsettled). It waits while a reservation
// is open (its client holds it and may still commit it), and while
// written extents keep getting committed; written extents that stay
// unnamed for settleIdle are left to reconciliation (their puts were never
// acknowledged). A reservation that can no longer commit is not waited
// for: one that expired, or one whose client's connection ended without
// a goodbye, which the unit keeps in quarantine while that client lives
// (storage's quarantine.go). It takes at most half of what is left of
// ctx, so that the controller's own drain (a checkpoint save in flight)
// keeps the rest; what is then still reserved is left to reconciliation
// too.
func (s *server) settlePuts(ctx context.Context) {
	grace := s.cfg.ReconcileGrace
	if grace <= 0 {
		grace = storage.DefaultReconcileGrace
	}
	end := time.Now().Add(time.Hour)
	if d, ok := ctx.Deadline(); ok {
		end = time.Now().Add(time.Until(d) / 2)
	}
	wait, last, since := time.Millisecond, -1, time.Now()
	for {
		pending, open := 0, 0
		for _, ru := range s.units {
			pending += len(s.ctrl.Unreferenced(ru.u.ID(), ru.u.Unsettled(grace)))
			open += ru.u.Stats().OpenReservations
		}
		if pending == 0 {
			return
		}
		now := time.Now()
		if last < 0 || pending < last || open > 0 {
			since = now
		}
		last = pending
		if now.Sub(since) >= settleIdle || now.After(end) || ctx.Err() != nil {
			// With no grace, Unsettled lists only the extents of open
			// reservations.
			reserved := 0
			for _, ru := range s.units {
				reserved += len(ru.u.Unsettled(0))
			}
			reserved = min(reserved, pending)
			var left []string
			if written := pending - reserved; written > 0 {
				left = append(left, fmt.Sprintf("%d extents written and not committed", written))
			}
			if reserved > 0 {
				left = append(left, fmt.Sprintf("%d extents reserved by puts still open", reserved))
			}
			fmt.Fprintf(s.out, "tq serve: %s are left to reconciliation\n", strings.Join(left, " and "))
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		// Each look reads every cell of the units: not too often.
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// close closes what is left, all of it, and returns what failed.
func (s *server) close() error {
	var errs []error
	fail := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	if s.resp != nil {
		fail("close the Redis endpoint", s.resp.Close())
	}
	for _, ru := range s.units {
		if ru.mem != nil {
			ru.mem.Close()
		}
		fail(fmt.Sprintf("close storage unit %d's server", ru.u.ID()), ru.srv.Close())
		fail(fmt.Sprintf("close storage unit %d", ru.u.ID()), ru.u.Close()) // deregisters the segments
		if ru.rdma != nil {
			fail(fmt.Sprintf("close storage unit %d's RDMA target", ru.u.ID()), ru.rdma.Close())
		}
	}
	if s.rdmaDev != nil {
		fail("close RDMA device "+s.cfg.RDMADevice, s.rdmaDev.Close())
	}
	if s.ctrlSrv != nil {
		fail("close the controller's server", s.ctrlSrv.Close())
	}
	for _, f := range s.closers {
		errs = append(errs, f())
	}
	if s.ctrl != nil {
		fail("close the controller", s.ctrl.Close())
	}
	return errors.Join(errs...)
}

// logf reports background trouble (a failed snapshot, a journal that
// cannot be written, a handler that panicked) at level error.
func (s *server) logf(format string, args ...any) {
	s.log.Error(fmt.Sprintf(format, args...))
}

// restore loads --restore's checkpoint once storage units are up: a
// checkpoint with data needs a live unit to write its cells to (for
// --role controller, units of other processes; wait for them a while).
//
// --restore stays where it was given (a config file, a Kubernetes args
// list), so every restart sees it: it loads only into a controller that
// recovered no partition from its data directory (a fresh one, or
// --in-memory). Loaded over a restarted controller, it would drop every
// key written and acknowledged since the checkpoint and free their cells.
// --restore-force loads it all the same.
//
// Until it is done the controller refuses clients (units may connect, to
// take the checkpoint's cells): a change one made meanwhile would be
// acknowledged, then replaced by the load.
func (s *server) restore(ctx context.Context) error {
	if s.cfg.Restore == "" || s.ctrlSrv == nil {
		return nil
	}
	defer s.ctrlSrv.AdmitClients()
	if s.held > 0 && !s.restoreForce {
		fmt.Fprintf(s.out, "tq serve: not restoring checkpoint %s: the controller's state in %s holds %d partition(s) from an earlier start, which the checkpoint would replace, dropping what was written since it (--restore loads only into a controller that holds none; give --restore-force once to load it all the same)\n",
			s.cfg.Restore, s.cfg.controllerDir(), s.held)
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Not a unit of an earlier start that was not heard from since
		// (it is listed alive for a while, and may be gone), nor one that
		// has its id and has not joined yet (it lists no address).
		alive := false
		for _, u := range s.ctrlSrv.Units() {
			alive = alive || s.live(u) && len(u.Addrs) > 0
		}
		if alive || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := s.ctrlSrv.LoadCheckpoint(ctx, s.cfg.Restore); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(s.out, "tq serve: restored checkpoint %s\n", s.cfg.Restore)
	return nil
}
