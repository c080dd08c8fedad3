package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/resp"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// serveConfig is `tq serve`'s configuration: flags, or a YAML file with
// the same names (flags win).
//
// The data directory (DataDir) is private to the user (0700) and laid
// out as DATADIR/token (the token, 0600), DATADIR/controller/ (the
// controller's log and snapshots) and DATADIR/checkpoints/ (checkpoints
// by name).
type serveConfig struct {
	Role              string        `yaml:"role"`
	Listen            string        `yaml:"listen"`
	Socket            string        `yaml:"socket"`
	Controller        string        `yaml:"controller"`
	Units             int           `yaml:"units"`
	UnitListen        string        `yaml:"unit_listen"`
	SocketDir         string        `yaml:"socket_dir"`
	Capacity          byteSize      `yaml:"capacity"`
	HugePages         bool          `yaml:"huge_pages"`
	Token             string        `yaml:"token,omitempty"`
	Insecure          bool          `yaml:"insecure"`
	RefuseClearToken  bool          `yaml:"refuse_clear_token"`
	DataDir           string        `yaml:"data_dir"` // see above
	Fsync             string        `yaml:"fsync"`
	InMemory          bool          `yaml:"in_memory"`
	Restore           string        `yaml:"restore"`
	Advertise         string        `yaml:"advertise"`
	UnitAdvertise     string        `yaml:"unit_advertise"`
	PreAlloc          int           `yaml:"pre_alloc"`
	Sampler           string        `yaml:"sampler"`
	KeptBatchTTL      time.Duration `yaml:"kept_batch_ttl"`
	HeldFetchTTL      time.Duration `yaml:"held_fetch_ttl"`
	HeldClientGrace   time.Duration `yaml:"held_client_grace"`
	PeerTimeout       time.Duration `yaml:"peer_timeout"`
	MaxPartitions     int           `yaml:"max_partitions"`
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	ReconcileInterval time.Duration `yaml:"reconcile_interval"`
	ReconcileGrace    time.Duration `yaml:"reconcile_grace"`
	ReserveWait       time.Duration `yaml:"reserve_wait"` // storage.ServerConfig.ReserveWait
	ShutdownTimeout   time.Duration `yaml:"shutdown_timeout"`
	ControllerWait    time.Duration `yaml:"controller_wait"`
	ShmQuarantine     time.Duration `yaml:"shm_quarantine"` // storage.ServerConfig.Quarantine
	Name              string        `yaml:"name"`
	RESP              string        `yaml:"resp"`
	RESPSocket        string        `yaml:"resp_socket"`
	RESPPartition     string        `yaml:"resp_partition"`
	RESPMaxValue      byteSize      `yaml:"resp_max_value"`
	RESPLoops         int           `yaml:"resp_loops"`
	Loops             int           `yaml:"loops"`
	RDMADevice        string        `yaml:"rdma_device"`
	Metrics           string        `yaml:"metrics"` // see metricsAddr
	Pprof             string        `yaml:"pprof"`   // the same form
	MetricsTokenFile  string        `yaml:"metrics_token_file"`
	LogFormat         string        `yaml:"log_format"`
	LogLevel          string        `yaml:"log_level"`

	// tokenFrom says where Token came from once secure resolved it.
	tokenFrom string
	// tokenInFile is set when Token is the --config file's token key
	// (no --token given over it), so that tokenSource names the file.
	tokenInFile bool
	// metricsToken is what /metrics and --pprof ask for (see
	// requireBearer): --metrics-token-file's, else $TQ_METRICS_TOKEN, else
	// none. Set by secure.
	metricsToken string
}

func defaultServeConfig() serveConfig {
	dataDir, _ := auth.DefaultDataDir() // "" without $HOME: validate says so
	return serveConfig{
		DataDir:       dataDir,
		Role:          "all",
		Listen:        "127.0.0.1:7370",
		Units:         2,
		UnitListen:    "127.0.0.1:0",
		SocketDir:     filepath.Join(os.TempDir(), fmt.Sprintf("tq-%d", os.Getuid())),
		Capacity:      1 << 30,
		HugePages:     true,
		Sampler:       "sequential",
		MaxPartitions: controller.DefaultMaxPartitions,
		Fsync:         "batch",
		// The durations whose 0 the packages read as their default are
		// given that default here, so that --check-config prints what is
		// used, not 0s.
		KeptBatchTTL:      controller.DefaultKeptBatchTTL,
		HeldFetchTTL:      controller.DefaultHeldFetchTTL,
		HeldClientGrace:   controller.DefaultHeldClientGrace,
		PeerTimeout:       wire.DefaultPeerTimeout,
		ReconcileInterval: storage.DefaultReconcileInterval,
		ReconcileGrace:    storage.DefaultReconcileGrace,
		ReserveWait:       storage.DefaultReserveWait,
		ShmQuarantine:     storage.DefaultQuarantine,
		HeartbeatInterval: time.Second,
		ShutdownTimeout:   10 * time.Second,
		ControllerWait:    2 * time.Minute,
		RESPPartition:     "default",
		RESPMaxValue:      resp.DefaultMaxValue,
		LogFormat:         "text",
		LogLevel:          "info",
	}
}

func (c *serveConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Role, "role", c.Role, "what to run: all (a controller and its storage units), controller, or unit")
	fs.StringVar(&c.Listen, "listen", c.Listen, `controller TCP address ("" for none)`)
	fs.StringVar(&c.Advertise, "advertise", c.Advertise, "the controller's address as clients on other hosts dial it, HOST or HOST:PORT (default: the --listen address; on a wildcard such as 0.0.0.0 or [::], this host's address on its default route)")
	fs.StringVar(&c.Socket, "socket", c.Socket, "controller unix socket (default SOCKET_DIR/controller.sock)")
	fs.StringVar(&c.Controller, "controller", c.Controller, "the controller's address, for --role unit (tcp://host:port or unix:///path)")
	fs.IntVar(&c.Units, "units", c.Units, "storage units to run, for --role all")
	fs.StringVar(&c.UnitListen, "unit-listen", c.UnitListen, "storage units' TCP address (port 0: any free port)")
	fs.StringVar(&c.UnitAdvertise, "unit-advertise", c.UnitAdvertise, "the HOST storage units register with the controller for their TCP address, with each unit's own port, and the host printed for --metrics and --pprof (default: the address each listens on; a wildcard replaced by --advertise's host if set, else by this host's address on its default route)")
	fs.StringVar(&c.SocketDir, "socket-dir", c.SocketDir, "directory for unix sockets, created 0700; refused unless owned by this user and writable by nobody else")
	fs.Var(&c.Capacity, "capacity", "bytes per storage unit (e.g. 512MiB, 4GiB)")
	fs.BoolVar(&c.HugePages, "huge-pages", c.HugePages, "store in 2 MiB huge pages when the kernel has them reserved (vm.nr_hugepages), else in pre-faulted 4 KiB pages; tq stat shows which")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the token and the controller's state, private to this user ($TQ_DATA_DIR, else $XDG_STATE_HOME/tq, else ~/.local/state/tq)")
	fs.StringVar(&c.Fsync, "fsync", c.Fsync, "when the controller's log reaches the disk: batch (every change on disk before its reply; concurrent changes share an fsync), always (an fsync per change), never (the operating system writes it; a machine crash may lose the last moments)")
	fs.BoolVar(&c.InMemory, "in-memory", c.InMemory, "keep the controller's metadata in memory only: a restart forgets every key and row (the units then free their bytes)")
	fs.StringVar(&c.Restore, "restore", c.Restore, "load checkpoint NAME (from DATA_DIR/checkpoints) once the storage units are up, into a controller that holds no partition (a restart keeps its state; see --restore-force); one that is not there fails the start before anything listens")
	fs.StringVar(&c.Token, "token", c.Token, "shared secret every client and unit must present (default: $TQ_TOKEN, else DATA_DIR/token, created on first start; clients of this user find it there). Prefer $TQ_TOKEN: other users of this host see a command line (ps). One word of at most 4096 bytes: white space (a trailing newline, say) or a control character in --token or $TQ_TOKEN is refused, as clients refuse it, and so is a longer token or $TQ_TOKEN set but empty")
	fs.BoolVar(&c.RefuseClearToken, "refuse-clear-token", c.RefuseClearToken, "refuse clients and units that send the token in clear (older than the challenge handshake, which never sends it); by default they are still admitted")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "DANGEROUS: no token at all, so that ANY LOCAL USER (and, beyond loopback, anyone on the network) can read, overwrite and wipe the data; refused with --token or $TQ_TOKEN")
	fs.IntVar(&c.PreAlloc, "pre-alloc", c.PreAlloc, fmt.Sprintf("rows reserved when a partition is created (at most %d)", maxPreAlloc))
	fs.StringVar(&c.Sampler, "sampler", c.Sampler, "the default sampler (a fetch may name another): sequential, rank-aware, grpo:N, seqlen:N:DP, token-budget:N:DP")
	fs.IntVar(&c.MaxPartitions, "max-partitions", c.MaxPartitions, "the most partitions the controller holds: a request that would create one more is refused (CODE_CAPACITY) until one is cleared; a log or checkpoint that holds more still loads (0: the default; negative: no limit)")
	durationVar(fs, &c.KeptBatchTTL, "kept-batch-ttl", c.KeptBatchTTL, "how long (a `duration`) a batch kept for a data-parallel group (rank-aware, grpo) may go unfetched before, if the group left it behind, its rows go back to the task (0: the default; negative: never)")
	durationVar(fs, &c.HeldFetchTTL, "held-fetch-ttl", c.HeldFetchTTL, "how long (a `duration`) rows a loader fetched ahead stay held for it (its task's other consumers wait for them rather than end) before, neither kept nor given back, they go back to the task (0: the default; negative: never)")
	durationVar(fs, &c.PeerTimeout, "peer-timeout", c.PeerTimeout, "how long (a `duration`) the host of a client on TCP may go without answering before the controller takes it for gone, as a client that closed its connections (see --held-client-grace): a host that crashed or dropped off the network closes nothing (0: the default; negative: the system's TCP keepalive, minutes)")
	durationVar(fs, &c.HeldClientGrace, "held-client-grace", c.HeldClientGrace, "how long (a `duration`) a client that closed its every connection (killed, or exited) has to connect again before the rows it held go back to the task, as soon as another consumer waits at the end for them, rather than after --held-fetch-ttl (0: the default; negative: never)")
	durationVar(fs, &c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "storage unit heartbeat interval, a `duration` (from 10ms to 1m), for the controller, which tells its units; a unit silent for five is reported dead")
	durationVar(fs, &c.ReconcileInterval, "reconcile-interval", c.ReconcileInterval, "how often (a `duration`) a storage unit reports the extents the controller has not confirmed, so those no cell references are freed (0: the default)")
	durationVar(fs, &c.ReconcileGrace, "reconcile-grace", c.ReconcileGrace, "how long (a `duration`) after its write an extent may wait for its commit before reconciliation may free it; a commit later than that is refused (0: the default)")
	durationVar(fs, &c.ReserveWait, "reserve-wait", c.ReserveWait, "how long (a `duration`) a write to a storage unit with no room waits for room before the unit refuses it (CODE_CAPACITY) and the client places it anew; at most 8s, as the connection answers nothing else meanwhile and clients take a unit silent for 10s for gone (0: the default)")
	durationVar(fs, &c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long (a `duration`) SIGTERM waits for requests in flight and for puts written to this process's units to commit")
	durationVar(fs, &c.ControllerWait, "controller-wait", c.ControllerWait, "with --role unit: how long (a `duration`) a starting unit keeps trying to reach a controller that does not answer yet (one started after its units, as a Kubernetes deployment does); 0: fail at once")
	durationVar(fs, &c.ShmQuarantine, "shm-quarantine", c.ShmQuarantine, "how long (a `duration`) a storage unit keeps the reservations and leases of a same-host session that ended without the client's goodbye (the connection broke, or the unit refused what the client sent) out of reuse while the client process lives, since it may still be copying into them; they come back earlier when it exits; tq stat shows them as quarantined (0: the default; negative: no quarantine, they come back when the session ends)")
	fs.StringVar(&c.Name, "name", c.Name, "name shown in tq stat")
	fs.StringVar(&c.RESP, "resp", c.RESP, `serve the Redis protocol on this TCP address (e.g. 127.0.0.1:6380; "" for none), for --role all; clients AUTH with the token`)
	fs.StringVar(&c.RESPSocket, "resp-socket", c.RESPSocket, `serve the Redis protocol on this unix socket too (e.g. /run/tq/resp.sock; "" for none), for --role all: redis-cli -s, redis-py's unix_socket_path; clients AUTH with the token; its directory is refused, as --socket-dir is, unless owned by this user and writable by nobody else`)
	fs.StringVar(&c.RESPPartition, "resp-partition", c.RESPPartition, "the partition a Redis-protocol connection starts in (SELECT 0)")
	fs.Var(&c.RESPMaxValue, "resp-max-value", "largest value one Redis-protocol command may carry (e.g. 512MiB)")
	fs.IntVar(&c.RESPLoops, "resp-loops", c.RESPLoops, "event loops serving Redis-protocol connections while they send small commands that need not wait (0: half the CPUs, at least one; -1: none, a goroutine per connection); see wire/resp.md")
	fs.IntVar(&c.Loops, "loops", c.Loops, "event loops serving the controller's connections while they send small requests that need no goroutine (KV gets that need not wait for the log; with --in-memory KV puts too, and metadata operations but RESOLVE_KEYS; 0: half the CPUs, at least one; -1: none, a goroutine per connection); see wire/spec.md")
	fs.StringVar(&c.RDMADevice, "rdma-device", c.RDMADevice, "serve the storage units over RDMA on this device too (mlx5_0; emu0 is the emulated device)")
	fs.StringVar(&c.Metrics, "metrics", c.Metrics, `serve Prometheus metrics at http://ADDR/metrics and the probes /healthz (the process lives) and /readyz (its servers are up, its storage units registered with the controller) (PORT or :PORT: loopback, 127.0.0.1:PORT; "" for none)`)
	fs.StringVar(&c.Pprof, "pprof", c.Pprof, `serve Go's profiles (net/http/pprof) at http://ADDR/debug/pprof/ (PORT or :PORT: loopback; "" for none; beyond loopback only with a metrics token)`)
	fs.StringVar(&c.MetricsTokenFile, "metrics-token-file", c.MetricsTokenFile, "a file holding the token /metrics and --pprof ask for, as \"Authorization: Bearer TOKEN\" (Prometheus: authorization.credentials_file); owned by this user, mode 0600, not a symbolic link; default $"+envMetricsToken+"; with neither they ask none (the probes /healthz and /readyz never do)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format on stderr: text or json (log/slog)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "least level logged: debug, info, warn or error")
}

// loadYAML reads a config file over c. Unknown keys, a value that is
// not an integer for an integer key (yaml.v3 would truncate 3.9 to 3)
// and a second document (after ---, which would be ignored) are errors.
func (c *serveConfig) loadYAML(path string) error {
	b, fi, err := readConfigFile(path)
	if err != nil {
		// "--config PATH: open: no such file or directory", not the
		// path twice.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("--config %s: %s: %w", path, pe.Op, pe.Err)
		}
		return fmt.Errorf("--config %s: %w", path, err)
	}
	var docs []*yaml.Node
	for dec := yaml.NewDecoder(bytes.NewReader(b)); ; {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
		docs = append(docs, &doc)
	}
	if len(docs) > 1 {
		return fmt.Errorf("config %s: %d YAML documents (separated by ---): want one", path, len(docs))
	}
	if len(docs) == 1 && len(docs[0].Content) == 1 {
		if err := checkKeys(docs[0].Content[0]); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if c.Token != "" {
		return configTokenPrivate(path, fi)
	}
	return nil
}

// readConfigFile reads the --config file, and stats what it read.
func readConfigFile(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(f)
	return b, fi, err
}

// configTokenPrivate refuses a --config file with a token key that is not
// private as auth.ReadToken wants a token file: owned by this user, and
// neither readable nor writable by group or others. A config file is
// often left 0644, which would give every user of the host the token.
func configTokenPrivate(path string, fi fs.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if euid := os.Geteuid(); int(st.Uid) != euid {
			return fmt.Errorf("--config %s has a token key but is owned by uid %d, not by this user (uid %d), who can change the token: "+
				"move the token to $%s or the data directory's token file, or own the file", path, st.Uid, euid, auth.EnvToken)
		}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("--config %s has mode %04o (%v) and a token key: other users can read the token: fix with chmod 600 %s, "+
			"or move the token to $%s or the data directory's token file (and consider it leaked: choose a new one)",
			path, uint32(perm), perm, path, auth.EnvToken)
	}
	return nil
}

// checkKeys checks the values of m's keys that yaml.v3 would take
// wrongly or report without the key: a key must have a value (yaml.v3
// leaves the setting at its default for a null: `listen:`), an integer
// key's value must be an integer, a size key's a size, a duration key's
// a duration with its unit, a bool key's a bool, a string key's a
// scalar.
func checkKeys(m *yaml.Node) error {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	types := map[string]reflect.Type{}
	typ := reflect.TypeFor[serveConfig]()
	for i := range typ.NumField() {
		if key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ","); key != "" {
			types[key] = typ.Field(i).Type
		}
	}
	var errs []error
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		switch t := types[k.Value]; {
		case t == nil:
		case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null":
			if t.Kind() == reflect.String {
				errs = append(errs, fmt.Errorf(`line %d: %s has no value, which would keep its default: write %s: "" for none`, v.Line, k.Value, k.Value))
			} else {
				errs = append(errs, fmt.Errorf("line %d: %s has no value, which would keep its default: give one", v.Line, k.Value))
			}
		case t == reflect.TypeFor[byteSize]():
			if _, err := parseSize(v.Value); err != nil || v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("line %d: %s %q: want a size like 1048576, 512MiB or 4GiB", v.Line, k.Value, v.Value))
			}
		case t == reflect.TypeFor[time.Duration]():
			// yaml.v3 takes a string time.ParseDuration takes, and no
			// bare number, not even 0.
			if _, err := time.ParseDuration(v.Value); err != nil || v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
				errs = append(errs, fmt.Errorf("line %d: %s %q: want a duration like 30s, 2m or -1s", v.Line, k.Value, v.Value))
			}
		case t.Kind() == reflect.Int:
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" {
				errs = append(errs, fmt.Errorf("line %d: %s %q: not an integer", v.Line, k.Value, v.Value))
			}
		case t.Kind() == reflect.Bool:
			// yaml.v3 takes true and false, and YAML 1.1's yes, no, on, off,
			// y and n even quoted; it refuses "false", naming neither the
			// key nor what it wants.
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" && !slices.Contains(yaml11Bools, v.Value) {
				errs = append(errs, fmt.Errorf("line %d: %s %q: want a bool, true or false (unquoted)", v.Line, k.Value, v.Value))
			}
		case t.Kind() == reflect.String:
			if v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("line %d: %s: want a string, not a list or a map", v.Line, k.Value))
			}
		}
	}
	return errors.Join(errs...)
}

// yaml11Bools are the strings yaml.v3 decodes into a bool besides true
// and false (decode.go, "compatibility with the 1.1 spec").
var yaml11Bools = []string{"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off", "OFF"}

func (c *serveConfig) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Role {
	case "all", "controller", "unit":
	default:
		bad("--role %q: want all, controller or unit", c.Role)
	}
	if c.Role == "unit" && c.Controller == "" {
		bad("--role unit needs --controller ADDR")
	}
	if c.Role != "unit" && c.Listen == "" && c.Socket == "" && c.SocketDir == "" {
		bad("the controller needs --listen or --socket")
	}
	// (--role all's units serve the controller's KV path and --resp in
	// the process, without an address of their own.)
	if c.Role == "unit" && c.UnitListen == "" && c.SocketDir == "" {
		bad(`--unit-listen "" and --socket-dir "": a storage unit of --role unit needs an address clients can reach: --unit-listen or --socket-dir`)
	}
	if c.Role != "controller" && c.RDMADevice != "" && c.UnitListen == "" {
		bad(`--rdma-device %s with --unit-listen "": RDMA's control requests go over the storage unit's TCP connection, which --unit-listen gives it`, c.RDMADevice)
	}
	if c.Role == "all" && c.Units < 1 {
		bad("--units %d: need at least one storage unit", c.Units)
	}
	if c.Role != "controller" && c.Capacity <= 0 {
		bad("--capacity %v: must be positive", c.Capacity)
	}
	if c.PreAlloc < 0 {
		bad("--pre-alloc %d: must not be negative", c.PreAlloc)
	} else if c.PreAlloc > maxPreAlloc {
		bad("--pre-alloc %d: at most %d (the controller makes these rows whenever a partition is created)", c.PreAlloc, maxPreAlloc)
	}
	if c.ControllerWait < 0 {
		bad("--controller-wait %v: must not be negative", c.ControllerWait)
	}
	// A storage unit heartbeats no faster than every 10 ms (and at its
	// default, 1 s, when told less than a millisecond), while the
	// controller reports it dead after five intervals: below that floor
	// healthy units would flap between alive and lost.
	if c.HeartbeatInterval < minHeartbeat {
		bad("--heartbeat %v: must be at least %v (storage units heartbeat no faster)", c.HeartbeatInterval, minHeartbeat)
	} else if c.HeartbeatInterval > maxHeartbeat {
		// Nor slower than every minute: the controller would wait five of
		// its intervals (past ~512409h, overflowing to its 5 s default).
		bad("--heartbeat %v: must be at most %v (storage units heartbeat no slower)", c.HeartbeatInterval, maxHeartbeat)
	}
	if c.ReserveWait > maxReserveWait {
		bad("--reserve-wait %v: must be at most %v (the connection answers nothing else meanwhile, and a client takes a unit silent for 10s for gone)", c.ReserveWait, maxReserveWait)
	}
	// --shm-quarantine is not among these: every duration is valid there,
	// read as storage.ServerConfig.Quarantine reads it (0: the default;
	// negative: no quarantine).
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--shutdown-timeout", c.ShutdownTimeout}, {"--reconcile-interval", c.ReconcileInterval}, {"--reconcile-grace", c.ReconcileGrace}, {"--reserve-wait", c.ReserveWait}} {
		if d.v < 0 {
			bad("%s %v: must not be negative", d.name, d.v)
		}
	}
	for _, l := range []struct {
		name string
		n    int
	}{{"--loops", c.Loops}, {"--resp-loops", c.RESPLoops}} {
		if l.n < -1 {
			bad("%s %d: want -1 (none), 0 (half the CPUs) or a number of loops", l.name, l.n)
		}
	}
	for _, l := range []struct{ name, addr string }{{"--listen", c.Listen}, {"--unit-listen", c.UnitListen}, {"--resp", c.RESP}} {
		if l.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(l.addr); err != nil {
			bad("%s %q: %v", l.name, l.addr, err)
		} else if err := checkPort(port); err != nil {
			bad("%s %q: %v", l.name, l.addr, err)
		} else if p, _ := net.LookupPort("tcp", port); l.name == "--unit-listen" && p != 0 && c.Role == "all" && c.Units > 1 {
			// Every unit listens there: the second could not bind.
			bad("--units %d with --unit-listen %q: every storage unit listens on --unit-listen, and only one can have port %d: give port 0 (each unit a free port) or run one unit per process", c.Units, c.UnitListen, p)
		}
	}
	for _, l := range []struct{ name, addr string }{{"--metrics", c.Metrics}, {"--pprof", c.Pprof}} {
		if l.addr == "" {
			continue
		}
		if a, err := metricsAddr(l.addr); err != nil {
			bad("%s %q: %v", l.name, l.addr, err)
		} else if _, port, _ := net.SplitHostPort(a); checkPort(port) != nil {
			bad("%s %q: %v", l.name, l.addr, checkPort(port))
		}
	}
	errs = append(errs, c.checkListenClashes()...)
	if c.Controller != "" {
		if err := checkControllerAddr(c.Controller); err != nil {
			bad("--controller %q: %v", c.Controller, err)
		}
	}
	errs = append(errs, c.checkRoleFlags()...)
	if _, err := newLogger(io.Discard, c.LogFormat, c.LogLevel); err != nil {
		bad("%v", err)
	}
	if c.RESP != "" || c.RESPSocket != "" {
		if c.Role != "all" {
			bad("--resp and --resp-socket serve the Redis protocol from a controller and its storage units in one process: they need --role all, not %q", c.Role)
		}
		if c.RESPSocket != "" && !filepath.IsAbs(c.RESPSocket) {
			bad("--resp-socket %q: give an absolute path", c.RESPSocket)
		}
		if c.RESPPartition == "" {
			bad("--resp-partition: empty partition id")
		} else if strings.Contains(c.RESPPartition, "}") {
			bad("--resp-partition %q: a '}' cannot be written in a key's {partition} form", c.RESPPartition)
		} else if err := resp.CheckPartition(c.RESPPartition); err != nil {
			// Not UTF-8, or too long: the start would fail once the
			// units are up.
			bad("--resp-partition: %s", strings.TrimSuffix(err.Error(), ": "+engine.ErrInvalid.Error()))
		}
		if c.RESPMaxValue <= 0 {
			bad("--resp-max-value %v: must be positive", c.RESPMaxValue)
		}
	} else {
		// Set, they would be ignored without a word.
		def := defaultServeConfig()
		for _, f := range []struct {
			name    string
			v, dflt any
		}{
			{"resp-partition", c.RESPPartition, def.RESPPartition},
			{"resp-max-value", c.RESPMaxValue, def.RESPMaxValue},
			{"resp-loops", c.RESPLoops, def.RESPLoops},
		} {
			if f.v != f.dflt {
				bad("--%s %v: used only with --resp or --resp-socket (the Redis-protocol endpoint), which are not set", f.name, f.v)
			}
		}
	}
	if c.Advertise != "" {
		if host, port, err := splitHostMaybePort(c.Advertise); err != nil {
			bad("--advertise %q: %v", c.Advertise, err)
		} else if port != "" && checkPort(port) != nil {
			bad("--advertise %q: %v", c.Advertise, checkPort(port))
		} else if isWildcard(host) {
			bad("--advertise %q: a wildcard address cannot be dialed; name this host", c.Advertise)
		}
	}
	if c.UnitAdvertise != "" {
		if host, port, err := splitHostMaybePort(c.UnitAdvertise); err != nil {
			bad("--unit-advertise %q: %v", c.UnitAdvertise, err)
		} else if port != "" {
			bad("--unit-advertise %q: give a host; each unit registers its own port", c.UnitAdvertise)
		} else if isWildcard(host) {
			bad("--unit-advertise %q: a wildcard address cannot be dialed; name this host", c.UnitAdvertise)
		}
	}
	if c.Insecure && c.Token != "" {
		bad("--insecure and --token contradict each other: --insecure serves without a token")
	} else if c.Insecure && os.Getenv(auth.EnvToken) != "" {
		// A deployment that sets $TQ_TOKEN means to have one: served
		// without it, with only a warning on stderr, it is open to all.
		bad("--insecure and $%s contradict each other: --insecure serves without a token, dropping $%s's: drop --insecure, or unset $%s (%s= tq serve --insecure)",
			auth.EnvToken, auth.EnvToken, auth.EnvToken, auth.EnvToken)
	}
	if !c.Insecure {
		if c.Token != "" {
			if err := auth.CheckToken(c.Token); err != nil {
				bad("--token: %v", err)
			}
		} else if tok, set := os.LookupEnv(auth.EnvToken); tok != "" {
			if err := auth.CheckToken(tok); err != nil {
				bad("$%s: %v", auth.EnvToken, err)
			}
		} else if set {
			// A Kubernetes Secret with an empty value: taken as unset, a
			// unit looked for a token file it cannot have (failing on a
			// read-only root filesystem), a controller made its own.
			bad("%s", auth.EmptyEnvToken)
		}
	}
	if c.MetricsTokenFile == "" {
		if tok := os.Getenv(envMetricsToken); tok != "" {
			if err := auth.CheckToken(tok); err != nil {
				bad("$%s: %v", envMetricsToken, err)
			}
		}
	}
	if c.DataDir == "" && c.needsDataDir() {
		bad("no data directory: set --data-dir or $%s", auth.EnvDataDir)
	}
	if _, err := c.sampler(); err != nil {
		bad("--sampler: %v", err)
	}
	if _, err := journal.ParseFsync(c.Fsync); err != nil {
		bad("--fsync: %v", err)
	}
	// The default passes, as for checkRoleFlags: --check-config's output
	// lists every key and must read back.
	if c.InMemory && c.Fsync != defaultServeConfig().Fsync {
		bad("--fsync %s and --in-memory contradict each other: --in-memory keeps no log to fsync", c.Fsync)
	}
	if c.Restore != "" && c.Role == "unit" {
		bad("--restore is for the controller (--role all or controller)")
	}
	// Its format only: whether it is there is the data directory's to
	// say, which --check-config does not read (the start checks it).
	if c.Restore != "" {
		if err := controller.CheckCheckpointName(c.Restore); err != nil {
			bad("--restore: %v", err)
		}
	}
	return errors.Join(errs...)
}

// checkListenClashes refuses two TCP listeners of this process on one
// address: the second would fail to bind at start, once the first server
// was up, with "address already in use" naming neither flag. A wildcard
// host clashes with every host of its family on the same port; port 0
// (any free port) never clashes. Only the listeners the role opens
// count, and only well-formed addresses (validate refuses the others).
func (c *serveConfig) checkListenClashes() []error {
	type listener struct {
		name, given, host string // given: as the flag has it
		port              int
	}
	var ls []listener
	add := func(name, given, addr string) {
		host, port, err := net.SplitHostPort(addr)
		if given == "" || err != nil || checkPort(port) != nil {
			return
		}
		if p, _ := net.LookupPort("tcp", port); p != 0 {
			ls = append(ls, listener{name, given, host, p})
		}
	}
	if c.Role == "all" || c.Role == "controller" {
		add("--listen", c.Listen, c.Listen)
	}
	if c.Role == "all" || c.Role == "unit" {
		add("--unit-listen", c.UnitListen, c.UnitListen)
	}
	if c.Role == "all" {
		add("--resp", c.RESP, c.RESP)
	}
	for _, m := range []struct{ name, addr string }{{"--metrics", c.Metrics}, {"--pprof", c.Pprof}} {
		if a, err := metricsAddr(m.addr); err == nil {
			add(m.name, m.addr, a)
		}
	}
	var errs []error
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if a.port != b.port || !hostsClash(a.host, b.host) {
				continue
			}
			errs = append(errs, fmt.Errorf("%s %q and %s %q: both listen on port %d of one address, and only one can bind it: give them different ports",
				b.name, b.given, a.name, a.given, a.port))
		}
	}
	return errs
}

// hostsClash reports whether TCP listeners on hosts a and b, on the same
// port, would take the same address: equal hosts (localhost is
// 127.0.0.1, as Go binds it), or a wildcard and a host of a family it
// accepts (a name not an IP address counts as either family).
func hostsClash(a, b string) bool {
	if strings.EqualFold(a, "localhost") {
		a = "127.0.0.1"
	}
	if strings.EqualFold(b, "localhost") {
		b = "127.0.0.1"
	}
	family := func(h string) (v4, v6 bool) {
		if isWildcard(h) {
			return wildcardFamilies(h)
		}
		if ip := net.ParseIP(h); ip != nil {
			return ip.To4() != nil, ip.To4() == nil
		}
		return true, true
	}
	if !isWildcard(a) && !isWildcard(b) {
		ipa, ipb := net.ParseIP(a), net.ParseIP(b)
		if ipa != nil && ipb != nil {
			return ipa.Equal(ipb)
		}
		return strings.EqualFold(a, b)
	}
	a4, a6 := family(a)
	b4, b6 := family(b)
	return a4 && b4 || a6 && b6
}

// maxPreAlloc is the most --pre-alloc: the controller makes that many
// rows, in memory, with every partition it creates; past some millions
// one partition would take GiBs, and a value past the index space made
// the first request that created a partition panic.
const maxPreAlloc = 1 << 24

// minHeartbeat is the shortest --heartbeat: storage units heartbeat no
// faster (storage/join.go's floor).
const minHeartbeat = 10 * time.Millisecond

// maxHeartbeat is the longest --heartbeat: storage units heartbeat no
// slower (storage/join.go's ceiling).
const maxHeartbeat = time.Minute

// checkPort refuses a port net.Listen and net.Dial would, a number
// beyond 65535 or a name /etc/services does not know, and an empty one,
// which they take for 0 (a listener on any free port): an address that
// ends in ':' has lost its port. Port 0 is asked for as "0".
func checkPort(port string) error {
	if port == "" {
		return errors.New(`no port: want a number from 0 to 65535 (0: any free port)`)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}

// maxSocketPath is the longest path a unix socket can be bound at: Linux's
// sun_path holds 108 bytes with the NUL that ends the path.
const maxSocketPath = 107

// checkSocketPaths refuses a unix socket path that cannot be bound: one
// too long would fail at start, once the controller was made, with
// "bind: invalid argument". Under --socket-dir the longest name counts:
// a unit's fd socket, its id taken as of 5 digits, as many as the most
// units a controller holds (a cluster whose units re-registered past id
// 99999 needs a shorter directory). It runs once the paths are absolute,
// as they are bound.
func (c *serveConfig) checkSocketPaths() error {
	var errs []error
	for _, p := range []struct{ name, path, longest string }{
		{"--socket-dir", c.SocketDir, filepath.Join(c.SocketDir, fmt.Sprintf("unit-%d.sock.shm", controller.MaxUnits))},
		{"--socket", c.Socket, c.Socket},
		{"--resp-socket", c.RESPSocket, c.RESPSocket},
	} {
		if p.path != "" && len(p.longest) > maxSocketPath {
			what := "the path"
			if p.longest != p.path {
				what = fmt.Sprintf("a socket's path in it (%s)", filepath.Base(p.longest))
			}
			errs = append(errs, fmt.Errorf("%s %q: %s would have %d bytes, and a unix socket's path at most %d: choose a shorter one", p.name, p.path, what, len(p.longest), maxSocketPath))
		}
	}
	errs = append(errs, c.checkSocketClashes()...)
	return errors.Join(errs...)
}

// unitSocketName matches the names of the sockets a storage unit binds
// under --socket-dir (serve.go: unit-ID.sock, and its fd socket
// unit-ID.sock.shm).
var unitSocketName = regexp.MustCompile(`^unit-[0-9]+\.sock(\.shm)?$`)

// checkSocketClashes refuses two unix sockets of this process at one
// path: the controller's (--socket, else SOCKET_DIR/controller.sock), the
// Redis protocol's (--resp-socket) and the units' under --socket-dir:
// the second bind failed late ("address already in use"), once the
// controller was made and the first listener served.
func (c *serveConfig) checkSocketClashes() []error {
	type bound struct{ flag, path string }
	var socks []bound
	if c.Role != "unit" {
		switch {
		case c.Socket != "":
			socks = append(socks, bound{"--socket", filepath.Clean(c.Socket)})
		case c.SocketDir != "":
			socks = append(socks, bound{"--socket-dir", filepath.Join(c.SocketDir, "controller.sock")})
		}
	}
	if c.RESPSocket != "" {
		socks = append(socks, bound{"--resp-socket", filepath.Clean(c.RESPSocket)})
	}
	var errs []error
	for i, a := range socks {
		for _, b := range socks[:i] {
			if a.path == b.path {
				errs = append(errs, fmt.Errorf("%s and %s: both bind the unix socket %s: give each its own path", b.flag, a.flag, a.path))
			}
		}
		if c.Role != "controller" && c.SocketDir != "" && a.flag != "--socket-dir" &&
			filepath.Dir(a.path) == filepath.Clean(c.SocketDir) && unitSocketName.MatchString(filepath.Base(a.path)) {
			errs = append(errs, fmt.Errorf("%s %s: a storage unit binds its socket at that path under --socket-dir: give another name", a.flag, a.path))
		}
	}
	return errs
}

// checkControllerAddr checks --controller up front: a malformed address
// would otherwise be retried for --controller-wait as a controller not
// reachable yet.
func checkControllerAddr(addr string) error {
	network, a, err := wire.ParseAddr(addr)
	if err != nil {
		return errors.New("want tcp://HOST:PORT or unix:///PATH")
	}
	if network == "unix" {
		return nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("want tcp://HOST:PORT or unix:///PATH: %w", err)
	}
	if host == "" {
		return errors.New("no host: want tcp://HOST:PORT")
	}
	return checkPort(port)
}

// roleFlags are the flags (and config keys) that only some roles use,
// with the roles that do.
var roleFlags = []struct {
	name  string
	roles string // space-separated
	value func(*serveConfig) any
}{
	{"listen", "all controller", func(c *serveConfig) any { return c.Listen }},
	{"socket", "all controller", func(c *serveConfig) any { return c.Socket }},
	{"advertise", "all controller", func(c *serveConfig) any { return c.Advertise }},
	{"units", "all", func(c *serveConfig) any { return c.Units }},
	{"fsync", "all controller", func(c *serveConfig) any { return c.Fsync }},
	{"in-memory", "all controller", func(c *serveConfig) any { return c.InMemory }},
	{"pre-alloc", "all controller", func(c *serveConfig) any { return c.PreAlloc }},
	{"sampler", "all controller", func(c *serveConfig) any { return c.Sampler }},
	{"kept-batch-ttl", "all controller", func(c *serveConfig) any { return c.KeptBatchTTL }},
	{"held-fetch-ttl", "all controller", func(c *serveConfig) any { return c.HeldFetchTTL }},
	{"held-client-grace", "all controller", func(c *serveConfig) any { return c.HeldClientGrace }},
	{"peer-timeout", "all controller", func(c *serveConfig) any { return c.PeerTimeout }},
	{"max-partitions", "all controller", func(c *serveConfig) any { return c.MaxPartitions }},
	// A unit heartbeats at the interval its controller tells it.
	{"heartbeat", "all controller", func(c *serveConfig) any { return c.HeartbeatInterval }},
	{"loops", "all controller", func(c *serveConfig) any { return c.Loops }},
	{"resp-partition", "all", func(c *serveConfig) any { return c.RESPPartition }},
	{"resp-max-value", "all", func(c *serveConfig) any { return c.RESPMaxValue }},
	{"resp-loops", "all", func(c *serveConfig) any { return c.RESPLoops }},
	{"controller", "unit", func(c *serveConfig) any { return c.Controller }},
	{"controller-wait", "unit", func(c *serveConfig) any { return c.ControllerWait }},
	{"unit-listen", "all unit", func(c *serveConfig) any { return c.UnitListen }},
	{"capacity", "all unit", func(c *serveConfig) any { return c.Capacity }},
	{"huge-pages", "all unit", func(c *serveConfig) any { return c.HugePages }},
	{"rdma-device", "all unit", func(c *serveConfig) any { return c.RDMADevice }},
	{"reconcile-interval", "all unit", func(c *serveConfig) any { return c.ReconcileInterval }},
	{"reconcile-grace", "all unit", func(c *serveConfig) any { return c.ReconcileGrace }},
	{"reserve-wait", "all unit", func(c *serveConfig) any { return c.ReserveWait }},
	{"shm-quarantine", "all unit", func(c *serveConfig) any { return c.ShmQuarantine }},
}

// maxReserveWait bounds --reserve-wait below a client's ping timeout
// (wire.ConnConfig.PingTimeout, 10 s): a WRITE waiting for room holds its
// connection, pongs included.
const maxReserveWait = 8 * time.Second

// checkRoleFlags refuses a flag the role does not use, set to other than
// its default: it would be ignored. A default value passes, so that
// --check-config's output, which lists every key, reads back.
func (c *serveConfig) checkRoleFlags() []error {
	switch c.Role {
	case "all", "controller", "unit":
	default:
		return nil // said already
	}
	def := defaultServeConfig()
	var errs []error
	for _, f := range roleFlags {
		if slices.Contains(strings.Fields(f.roles), c.Role) {
			continue
		}
		if v := f.value(c); v != f.value(&def) {
			errs = append(errs, fmt.Errorf("--%s %v: not used by --role %s (only by --role %s)", f.name, v, c.Role, strings.ReplaceAll(f.roles, " ", " or ")))
		}
	}
	return errs
}

// unitAdvertise returns the host given out for a storage unit's TCP
// listener or the --metrics or --pprof endpoint, asked to listen on
// listenAddr: --unit-advertise, else --advertise's host for a wildcard
// listenAddr, else "" (the bound address, or for a wildcard this host's:
// see advertised). --advertise names this host for clients on others; a
// listener bound to one address (loopback, by default) accepts on that
// one only, and is given out as bound.
func (c *serveConfig) unitAdvertise(listenAddr string) string {
	if c.UnitAdvertise != "" {
		return c.UnitAdvertise
	}
	if host, _, err := net.SplitHostPort(listenAddr); err != nil || !isWildcard(host) {
		return ""
	}
	if c.Advertise != "" {
		if host, _, err := splitHostMaybePort(c.Advertise); err == nil {
			return host
		}
	}
	return ""
}

// controllerDir and checkpointDir are where the controller keeps its log
// and its checkpoints.
func (c *serveConfig) controllerDir() string { return filepath.Join(c.DataDir, "controller") }
func (c *serveConfig) checkpointDir() string { return filepath.Join(c.DataDir, "checkpoints") }

// needsDataDir reports whether this process keeps anything in the data
// directory: the controller's state, or a token it reads from there.
func (c *serveConfig) needsDataDir() bool {
	return c.Role != "unit" || (!c.Insecure && c.Token == "" && os.Getenv(auth.EnvToken) == "")
}

// checkExposure refuses a TCP listener beyond loopback without a token,
// unless --insecure asked for exactly that. It runs once the token is
// known (by default one always is).
func (c *serveConfig) checkExposure() error {
	var errs []error
	for _, l := range []struct{ name, addr string }{{"--listen", c.Listen}, {"--unit-listen", c.UnitListen}, {"--resp", c.RESP}} {
		if l.addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(l.addr)
		if err == nil && !isLoopback(host) && c.Token == "" && !c.Insecure {
			errs = append(errs, fmt.Errorf("%s %q listens beyond this host without a token: set --token (or --insecure to allow it)", l.name, l.addr))
		}
	}
	if c.Pprof != "" && c.metricsToken == "" && !c.Insecure {
		// Profiles and traces cost the process seconds of CPU each, and
		// a goroutine dump shows what it is doing with whose data.
		if addr, err := metricsAddr(c.Pprof); err == nil {
			if host, _, err := net.SplitHostPort(addr); err == nil && !isLoopback(host) {
				errs = append(errs, fmt.Errorf("--pprof %q listens beyond this host without a token: set --metrics-token-file or $%s (or --insecure to allow it)", c.Pprof, envMetricsToken))
			}
		}
	}
	return errors.Join(errs...)
}

// metricsExposed reports whether --metrics listens beyond this host
// without a token (allowed: a scraper of another host may know none,
// but it is said at start).
func (c *serveConfig) metricsExposed() bool {
	if c.Metrics == "" || c.metricsToken != "" {
		return false
	}
	addr, err := metricsAddr(c.Metrics)
	if err != nil {
		return false
	}
	host, _, err := net.SplitHostPort(addr)
	return err == nil && !isLoopback(host)
}

// envMetricsToken is the token /metrics and --pprof ask for, when
// --metrics-token-file names none.
const envMetricsToken = "TQ_METRICS_TOKEN"

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sampler builds the configured sampler (a fetch may choose another: see
// engine.FetchRequest.Sampler).
func (c *serveConfig) sampler() (engine.Sampler, error) {
	if c.Sampler == "" {
		return sampler.NewSequential(), nil
	}
	spec, err := sampler.ParseSpec(c.Sampler)
	if err != nil {
		return nil, err
	}
	return sampler.New(spec)
}

// byteSize is a size flag/YAML value: 1048576, 512MiB, 4GiB, 64KiB.
type byteSize int64

func (b byteSize) String() string { return bytesString(int64(b)) }

func (b *byteSize) Set(s string) error {
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(v)
	return nil
}

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error { return b.Set(n.Value) }

func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mul    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	t := strings.TrimSpace(s)
	mul := int64(1)
	for _, u := range units {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mul = strings.TrimSpace(v), u.mul
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes like 1048576, 512MiB or 4GiB", s)
	}
	if n > math.MaxInt64/mul {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mul, nil
}
