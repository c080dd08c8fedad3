package shm

// The control ring. A Conn sends its control requests over a shared-memory
// channel (internal/shmring) instead of the unit's wire socket when the
// unit offers one: after the handshake on the socket, it asks the unit's
// fd socket for a ring,
//
//	client ── connect(fd socket) ── "TQC1" | ring size | token ──▶ unit
//	client ◀── "TQF1" | status | 0 | region size  + ring memfd ──
//
// maps the memfd, and speaks the same wire protocol over the ring (a new
// handshake, a new session on the unit); the socket connection is then
// closed. The fd socket connection stays open while the ring lives: when
// either process dies the other reads EOF on it, the ring breaks, blocked
// calls fail at once with an error wrapping [wire.ErrUnavailable], and the
// unit gives the dead client's reservations and leases back as for a
// socket connection.
//
// Why the ring is the default: a control round trip between two
// processes, client here and unit in a child process, on the 2-vCPU
// reference VM (GOMAXPROCS default, the host shared with other work, load
// average 4–6), median of 3 runs of 20000:
//
//	go test -run '^$' -bench Control -benchtime 20000x -count 3 ./transport/shm
//
//	                        ns/op   p50 µs  mean µs  p99 µs  cpu µs/op
//	UNIT_STATS   ring      10 632     2.6     10.6      93       14.5
//	             socket    33 511    24.4     33.5      95       38.9
//	ACQUIRE+     ring      17 926     5.4     17.9     133       22.7
//	RELEASE      socket    72 023    64.8     71.9     185       82.7
//
// cpu µs/op is both processes' CPU time per operation: the bounded spin
// (10 µs, shmring.DefaultSpin) costs less CPU than the socket's wake-ups.
// Spinning 3 µs instead gave a UNIT_STATS p50 of 27 µs (a unit round
// trip does not fit in it), 30–100 µs no better p50 than 10 µs, and no
// spin at all (futex every time) 54 µs.
//
// Those numbers are with the version 1 doorbell (FUTEX_WAIT/FUTEX_WAKE).
// A side asleep in FUTEX_WAIT holds its P in a system call, and under
// concurrency that dominated: 1 KiB KV put+get with 16 clients ran at
// 10.7k ops/s over rings and 32.5k over sockets. The doorbell is now one
// byte on the liveness socket, read through Go's netpoller (see
// internal/shmring): the same benchmark runs at 28.9k over rings, and a
// lone UNIT_STATS round trip still takes a p50 of 1.9 µs (socket: 37 µs).

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Control picks the channel a [Conn] sends its control requests over.
type Control int

const (
	// ControlAuto uses a shared-memory ring when the unit offers one and
	// the unit's socket otherwise.
	ControlAuto Control = iota
	// ControlRing requires a ring: Dial fails with an error wrapping
	// [engine.ErrNotSupported] when the unit offers none.
	ControlRing
	// ControlSocket never asks for a ring.
	ControlSocket
)

func (m Control) String() string {
	switch m {
	case ControlAuto:
		return "auto"
	case ControlRing:
		return "ring"
	case ControlSocket:
		return "socket"
	}
	return fmt.Sprintf("Control(%d)", int(m))
}

// otherVersion marks a ring of another shmring version (a unit of another
// build) as not supported: auto mode then stays on the unit's socket.
func otherVersion(err error) error {
	if errors.Is(err, shmring.ErrVersion) {
		return fmt.Errorf("%w: %w", err, engine.ErrNotSupported)
	}
	return err
}

// dialRing sets up a control ring and returns a wire connection over it,
// its handshake done.
func (c *Conn) dialRing(ctx context.Context, hello *wirepb.Hello) (*wire.Conn, error) {
	uc, fd, _, err := c.fdExchange(ctx, wire.FdRequest{Ring: true, Token: c.fdToken})
	if err != nil {
		return nil, err
	}
	mem, err := shmring.Map(fd)
	unix.Close(fd) // the mapping keeps the pages
	if err != nil {
		uc.Close()
		return nil, otherVersion(err)
	}
	rc, err := shmring.NewConn(mem, shmring.SideA, uc, func() error { return shmring.Unmap(mem) }, shmring.Config{Spin: c.cfg.RingSpin})
	if err != nil {
		uc.Close()
		return nil, errors.Join(otherVersion(err), shmring.Unmap(mem))
	}
	wc := wire.NewConn(rc, c.connConfig()) // owns rc
	if _, err := wc.Hello(ctx, hello); err != nil {
		wc.Close()
		return nil, err
	}
	return wc, nil
}
