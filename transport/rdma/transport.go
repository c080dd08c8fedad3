package rdma

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/connset"
	"github.com/tqgo/tq/wire"
)

// Defaults.
const (
	DefaultQPs       = 2
	DefaultSliceSize = 1 << 20
	DefaultStaging   = 64 << 20
	DefaultTimeout   = 30 * time.Second
	DefaultGrace     = time.Second
	// DefaultAckTimeout is the exponent of the local ACK timeout: 4.096 µs
	// × 2^14 ≈ 67 ms per try, 7 tries: a dead peer is found in about half
	// a second.
	DefaultAckTimeout = 14
	DefaultRetryCnt   = 7
)

// Config tunes a [Transport]. The zero value means the defaults.
type Config struct {
	// Device names the RDMA device ("mlx5_0"; "emu0" is the emulated
	// one, only ever used when named). "" picks a hardware device: the
	// one nearest this process's NUMA node when there are several.
	Device string
	// QPs is the number of queue pairs per unit connection; a transfer's
	// slices are spread over them (0: 2; at most 16).
	QPs int
	// SliceSize is the most bytes one work request moves (0: 1 MiB).
	SliceSize int
	// Staging is the registered memory, per transport, that bytes from
	// and to unregistered caller buffers go through (0: 64 MiB). It is
	// cut into SliceSize pieces.
	Staging int
	// Timeout bounds an operation whose context has no deadline (0: 30 s).
	Timeout time.Duration
	// AckTimeout and RetryCnt set how long an unanswered work request is
	// retried before it fails (0: 14 and 7, about half a second): the
	// local ACK timeout of this side's queue pairs, 4.096 µs × 2^AckTimeout
	// per try (at most 31), and the tries after the first (at most 7).
	// They are this side's alone: its queue pairs send every READ and
	// WRITE, the unit's send nothing.
	AckTimeout, RetryCnt uint8
	// Token is presented in the handshake to units that require one.
	Token string
	// Name identifies this client in the units' logs.
	Name string
	// Grace is how long a request that opens or ends a hold on the unit
	// waits for its answer past the caller's context (0: 1 s).
	Grace time.Duration
	// Conn tunes the control connection.
	Conn wire.ConnConfig
}

// Validate reports a config New would run badly with, wrapping
// [engine.ErrInvalid].
func (c Config) Validate() error {
	switch {
	case c.QPs < 0 || c.QPs > MaxQPs:
		return fmt.Errorf("rdma config: %d queue pairs (want 0 to %d): %w", c.QPs, MaxQPs, engine.ErrInvalid)
	case c.SliceSize < 0 || c.SliceSize > 1<<30:
		return fmt.Errorf("rdma config: slice size %d (want 0 to 1 GiB): %w", c.SliceSize, engine.ErrInvalid)
	case c.Staging < 0:
		return fmt.Errorf("rdma config: negative staging size %d: %w", c.Staging, engine.ErrInvalid)
	case c.AckTimeout > 31:
		// A queue pair's timeout is 5 bits and its retry count 3: a
		// device truncates larger ones or refuses them with EINVAL.
		return fmt.Errorf("rdma config: ack timeout %d (want 0 to 31, an exponent): %w", c.AckTimeout, engine.ErrInvalid)
	case c.RetryCnt > 7:
		return fmt.Errorf("rdma config: retry count %d (want 0 to 7): %w", c.RetryCnt, engine.ErrInvalid)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.QPs == 0 {
		c.QPs = DefaultQPs
	}
	if c.SliceSize == 0 {
		c.SliceSize = DefaultSliceSize
	}
	if c.Staging == 0 {
		c.Staging = DefaultStaging
	}
	c.Staging = max(c.Staging, c.SliceSize)
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.RetryCnt == 0 {
		c.RetryCnt = DefaultRetryCnt
	}
	return c
}

// Transport dials storage units over RDMA. It opens its device, and
// registers its staging memory, on the first Dial. It is safe for
// concurrent use.
type Transport struct {
	cfg   Config
	conns connset.Set[*Conn]

	mu      sync.Mutex
	dev     *Device
	devErr  error // why the device could not be opened (asked once)
	staging *staging
	regs    []*MR // caller buffers registered with Register
	closed  bool
}

var _ engine.Transport = (*Transport)(nil)

// New returns a transport; cfg is checked by Dial (see Config.Validate).
func New(cfg Config) *Transport { return &Transport{cfg: cfg.withDefaults()} }

// Name returns "rdma".
func (t *Transport) Name() string { return "rdma" }

// Device opens the transport's device (once: a failure is remembered,
// so auto selection asks the host once) and returns it. It fails with an
// error wrapping [engine.ErrNotSupported] when the host has no such
// device, or no device at all, or the build has no verbs.
func (t *Transport) Device() (*Device, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deviceLocked()
}

func (t *Transport) deviceLocked() (*Device, error) {
	if t.closed {
		return nil, fmt.Errorf("rdma transport closed: %w", engine.ErrClosed)
	}
	if t.dev != nil || t.devErr != nil {
		return t.dev, t.devErr
	}
	dev, st, err := t.open()
	if err != nil {
		t.devErr = err
		return nil, err
	}
	t.dev, t.staging = dev, st
	return dev, nil
}

// open opens the configured device and registers the staging memory.
func (t *Transport) open() (*Device, *staging, error) {
	if err := t.cfg.Validate(); err != nil {
		return nil, nil, err
	}
	name := t.cfg.Device
	if name == "" {
		devs, err := Devices()
		if err != nil {
			return nil, nil, err
		}
		name, err = PickDevice(devs, currentNode())
		if err != nil {
			return nil, nil, err
		}
	}
	dev, err := OpenDevice(name)
	if err != nil {
		return nil, nil, err
	}
	st, err := newStaging(dev, t.cfg.Staging, t.cfg.SliceSize)
	if err != nil {
		dev.Close()
		return nil, nil, err
	}
	return dev, st, nil
}

// PickDevice chooses among devs the hardware device nearest NUMA node
// (the first when none is nearer; node -1: the first). Emulated devices
// are never picked: they are used only when named. No hardware device is
// an error wrapping [engine.ErrNotSupported].
func PickDevice(devs []DeviceInfo, node int) (string, error) {
	best := ""
	for _, d := range devs {
		if d.Emulated {
			continue
		}
		if best == "" {
			best = d.Name
		}
		if node >= 0 && d.NUMANode == node {
			return d.Name, nil
		}
	}
	if best == "" {
		return "", fmt.Errorf("no RDMA device on this host (name one to use an emulated device): %w", engine.ErrNotSupported)
	}
	return best, nil
}

// currentNode is the NUMA node of the CPU this goroutine runs on now (-1:
// unknown).
func currentNode() int {
	var cpu, node uint32
	if _, _, e := unix.RawSyscall(unix.SYS_GETCPU, uintptrOf(&cpu), uintptrOf(&node), 0); e != 0 {
		return -1
	}
	return int(node)
}

// Register registers buf, memory the caller owns and keeps mapped for as
// long as the transport lives (mmap'd, or device memory — never Go heap
// memory), so that reads into it and writes from it move with no copy
// through staging memory. The registration lasts until Close.
func (t *Transport) Register(buf []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	dev, err := t.deviceLocked()
	if err != nil {
		return err
	}
	mr, err := dev.Register(buf, AccessLocalWrite)
	if err != nil {
		return err
	}
	t.regs = append(t.regs, mr)
	return nil
}

// lookup returns the lkey of a registration that holds all of b, if any.
func (t *Transport) lookup(b []byte) (uint32, bool) {
	if len(b) == 0 {
		return 0, false
	}
	p := sliceAddr(b)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.regs {
		if p >= m.Addr && p+uintptr(len(b)) <= m.Addr+uintptr(m.Len) {
			return m.LKey, true
		}
	}
	return 0, false
}

// Close closes every connection, stopping dials in progress (they fail
// with an error wrapping [engine.ErrClosed]), then the registrations, the
// staging memory and the device. It is idempotent.
func (t *Transport) Close() error {
	errs := []error{t.conns.Close()}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.Join(errs...)
	}
	t.closed = true
	for _, m := range t.regs {
		errs = append(errs, m.Close())
	}
	t.regs = nil
	if t.staging != nil {
		errs = append(errs, t.staging.close())
	}
	if t.dev != nil {
		errs = append(errs, t.dev.Close())
	}
	return errors.Join(errs...)
}

// staging is registered memory cut into slots of one slice each.
type staging struct {
	mem  []byte
	mr   *MR
	slot int
	free chan int
}

func newStaging(dev *Device, size, slot int) (*staging, error) {
	n := size / slot
	mem, err := unix.Mmap(-1, 0, n*slot, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of staging memory: %w", n*slot, err)
	}
	mr, err := dev.Register(mem, AccessLocalWrite)
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("register staging memory: %w", err)
	}
	s := &staging{mem: mem, mr: mr, slot: slot, free: make(chan int, n)}
	for i := range n {
		s.free <- i
	}
	return s, nil
}

func (s *staging) buf(i int) []byte { return s.mem[i*s.slot : (i+1)*s.slot : (i+1)*s.slot] }

func (s *staging) close() error {
	err := s.mr.Close()
	return errors.Join(err, unix.Munmap(s.mem))
}
