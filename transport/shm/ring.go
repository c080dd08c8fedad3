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

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

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

// dialRing sets up a control ring and returns a wire connection over it,
// its handshake done.
func (c *Conn) dialRing(ctx context.Context, hello *wirepb.Hello) (*wire.Conn, error) {
	uc, fd, _, err := c.fdExchange(ctx, wire.FdRequest{Ring: true, Token: c.cfg.Token})
	if err != nil {
		return nil, err
	}
	mem, err := shmring.Map(fd)
	unix.Close(fd) // the mapping keeps the pages
	if err != nil {
		uc.Close()
		return nil, err
	}
	rc, err := shmring.NewConn(mem, shmring.SideA, uc, func() error { return shmring.Unmap(mem) }, shmring.Config{Spin: c.cfg.RingSpin})
	if err != nil {
		uc.Close()
		return nil, errors.Join(err, shmring.Unmap(mem))
	}
	wc := wire.NewConn(rc, c.cfg.Conn) // owns rc
	if _, err := wc.Hello(ctx, hello); err != nil {
		wc.Close()
		return nil, err
	}
	return wc, nil
}
