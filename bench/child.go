package bench

import (
	"time"
)

// Child is a flow's writer or reader process started for a driver outside
// this package: a benchmark across hosts runs one per host, each under a
// wrapper that puts it on its host (such as `ip netns exec NS env
// TQ_HOST_ID=NS`), connected with the default transport selection.
type Child struct {
	p      *proc
	sum    uint64
	listen string // a reader's stream listener
}

// ChildConfig says where a Child connects and what it moves.
type ChildConfig struct {
	Controller, Token string
	Partition         string // the partition its puts and gets use
	Workload          Workload
	Case              string
	// Listen is where a reader's TCP stream listener binds (the baseline
	// of [Child.Send]); "" is 127.0.0.1:0.
	Listen string
}

// StartWriter starts a writer: it builds the workload's batch and puts it
// to the partition on each Put.
func StartWriter(exe string, wrapper []string, cfg ChildConfig) (*Child, error) {
	return startChild(exe, wrapper, roleWriter, cfg)
}

// StartReader starts a reader: it gets the partition's rows on each Get.
func StartReader(exe string, wrapper []string, cfg ChildConfig) (*Child, error) {
	return startChild(exe, wrapper, roleReader, cfg)
}

func startChild(exe string, wrapper []string, role string, cfg ChildConfig) (*Child, error) {
	args := append(append([]string{}, wrapper...), exe)
	p, ready, err := startProc(args[0], args[1:], role, childConfig{Controller: cfg.Controller, Token: cfg.Token,
		Workload: cfg.Workload, Case: cfg.Case, Partition: cfg.Partition, Listen: cfg.Listen})
	if err != nil {
		return nil, err
	}
	return &Child{p: p, sum: ready.Sum, listen: ready.TCP}, nil
}

// Sum is a writer's checksum of its batch: what a reader's Get of the
// same partition must match.
func (c *Child) Sum() uint64 { return c.sum }

// Put puts the writer's batch and returns how long the put took.
func (c *Child) Put() (time.Duration, error) { return c.timed(flowReq{Op: "put"}) }

// Get gets the partition's rows, checks them against sum, and returns how
// long the get took (the check not included).
func (c *Child) Get(sum uint64) (time.Duration, error) { return c.timed(flowReq{Op: "get", Sum: sum}) }

// GetInto gets the partition's rows into the reader's buffer, faulted in
// beforehand as a stream's receive buffer is, checks them against sum, and
// returns how long the get took.
func (c *Child) GetInto(sum uint64) (time.Duration, error) {
	return c.timed(flowReq{Op: "get_copy", Sum: sum})
}

// Clear clears the keys the writer put.
func (c *Child) Clear() error {
	_, err := c.p.call(flowReq{Op: "clear"})
	return err
}

// Listening returns the address of a reader's TCP stream listener.
func (c *Child) Listening() string { return c.listen }

// Connect joins a writer to a reader by a plain TCP stream, the baseline
// that [Child.Send] measures: the writer dials addr, the reader accepts.
func Connect(writer, reader *Child, addr string) error {
	if _, err := writer.p.call(flowReq{Op: "dial", Addr: addr}); err != nil {
		return err
	}
	_, err := reader.p.call(flowReq{Op: "accept", Net: "tcp"})
	return err
}

// Send streams the writer's batch bytes to its [Connect]ed reader over
// the plain TCP stream, and returns how long it took until the reader had
// them all.
func Send(writer, reader *Child) (time.Duration, error) {
	if err := reader.p.send(flowReq{Op: "recv", Net: "tcp"}); err != nil {
		return 0, err
	}
	d, err := writer.timed(flowReq{Op: "send", Net: "tcp"})
	if _, rerr := reader.p.recv(); err == nil {
		err = rerr
	}
	return d, err
}

// Close ends the process.
func (c *Child) Close() { c.p.close() }

func (c *Child) timed(req flowReq) (time.Duration, error) {
	r, err := c.p.call(req)
	return time.Duration(r.Ns), err
}
