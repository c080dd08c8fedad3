package resp

import (
	"bytes"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/internal/evloop"
	"github.com/tqgo/tq/wire"
)

// A loop serves the connections given to it from one goroutine, as
// Redis serves all of its own: it waits for input on all of them at once
// (epoll), reads what arrived, runs the complete commands found and
// writes their replies, with no goroutine parked and woken per request.
// With small values that park and wake is most of what a goroutine per
// connection costs on top (measured with redis-benchmark, 1 KiB SET and
// GET, on a server that does nothing else: 8.0 µs of server CPU per
// request with a goroutine per connection, 5.4 µs from one loop, against
// redis-server's 5.5).
//
// A loop runs only what cannot wait: commands marked loop, with no
// argument over 4 KiB before AUTH or over 64 KiB after. Everything else
// sends the connection to a goroutine of its own, for good: a command
// the loop does not take or that would wait (SET with its unit full),
// a reply over 64 KiB, a command cut short by the network (half-sent, or
// larger than what one read returns), input that is not plain RESP
// (inline commands, malformed frames: the goroutine's reader names what
// was wrong), and replies the socket does not take at once. The
// connection's goroutine first writes what the loop could not and reads
// what it did not serve, so no byte is lost or reordered, and from there
// the connection is served as every connection is without loops: with
// its deadlines, limits and budgets.
type loop struct {
	s   *Server
	set *evloop.Set[*conn]
	// unauthed counts connections that must still authenticate: while
	// there are some, the loop wakes every 100 ms to close those past
	// their AuthTimeout, and at once when one is evicted past
	// MaxUnauthenticated (a Poke).
	unauthed atomic.Int64

	// Used by the loop's goroutine only.
	buf      []byte
	args     [][]byte
	answered []*conn // served this pass, replies not written yet
}

const (
	loopRead    = 64 << 10 // bytes one read may return
	loopMaxArgs = 16
)

// startLoops starts n loops (fewer if the system refuses epoll: the
// connections then get goroutines); s.mu is held.
func (s *Server) startLoops(n int) []*loop {
	var out []*loop
	for range n {
		lp, err := newLoop(s)
		if err != nil {
			s.cfg.Logger.Warn("resp: no event loop; connections get a goroutine each", "err", err)
			break
		}
		out = append(out, lp)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			lp.run()
		}()
	}
	return out
}

func newLoop(s *Server) (*loop, error) {
	set, err := evloop.NewSet[*conn]()
	if err != nil {
		return nil, err
	}
	return &loop{s: s, set: set, buf: make([]byte, loopRead)}, nil
}

// adopt moves c onto the loop: the loop serves a duplicate of its socket
// and c.nc is closed. It returns false, changing nothing, when the loop
// has stopped or c's connection has no socket to duplicate. s.mu is held
// (so Close sees either c.nc or the loop's copy).
func (lp *loop) adopt(c *conn) bool {
	// Everything the loop reads of c is set before c is in the set: an
	// event for c (or a stale one for a closed connection whose fd
	// number c took) finds it there or nothing, and the level-triggered
	// epoll reports what c has to read again.
	err := lp.set.Add(c, func() (int, bool) {
		fd, ok := evloop.Take(c.nc)
		if !ok {
			return -1, false
		}
		c.nc, c.fd, c.lp = nil, fd, lp
		if !c.authed && lp.unauthed.Add(1) == 1 {
			lp.set.Poller.Poke() // the loop may be waiting with no timeout
		}
		return fd, true
	})
	switch {
	case err == nil:
		return true
	case c.fd < 0:
		return false // the loop has stopped, or c has no socket: c is as it was
	}
	lp.s.cfg.Logger.Warn("resp: a loop could not watch a connection; closing it", "err", err)
	if !c.authed {
		lp.unauthed.Add(-1)
	}
	unix.Close(c.fd)
	c.fd, c.lp = -1, nil
	lp.s.unlist(c)
	return true
}

// stop ends the loop: it closes its connections and returns.
func (lp *loop) stop() { lp.set.Stop() }

func (lp *loop) run() {
	defer lp.closeAll()
	for {
		timeout := -1
		if lp.unauthed.Load() > 0 {
			timeout = 100
		}
		ready, err := lp.set.Poller.Wait(timeout)
		if err != nil {
			lp.s.cfg.Logger.Error("resp: epoll_wait failed; closing the loop's connections", "err", err)
			return
		}
		if lp.set.Stopped() {
			return
		}
		for _, fd := range ready {
			if c, ok := lp.set.Lookup(fd); ok {
				lp.serve(c)
			}
		}
		// Replies go out after the pass, as in the wire server's loops
		// (see there why).
		for i, c := range lp.answered {
			if lp.flush(c, nil) && c.quit {
				lp.drop(c)
			}
			lp.answered[i] = nil
		}
		lp.answered = lp.answered[:0]
		if timeout > 0 {
			lp.expire()
		}
	}
}

// serve reads what arrived on c and runs the complete commands in it;
// their replies are written at the end of the pass (answered).
func (lp *loop) serve(c *conn) {
	n, err := evloop.Read(c.fd, lp.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil || n == 0:
		lp.drop(c)
		return
	}
	in := lp.buf[:n]
	for len(in) > 0 && !c.quit {
		args, rest, ok := lp.parse(in, c.authed)
		if !ok {
			break
		}
		if len(args) == 0 {
			in = rest // an empty or null array: no reply, as in Redis
			continue
		}
		mark := len(c.out)
		c.dispatch(args)
		if c.leave {
			c.out = c.out[:mark]
			break
		}
		in = rest
		// Replies to a long pipeline go out as they collect, as on a
		// connection's goroutine: what one read brings does not
		// hold its replies in memory.
		if len(c.out) >= 64<<10 && !lp.flush(c, in) {
			return
		}
	}
	if len(in) > 0 && !c.quit {
		lp.leave(c, in)
		return
	}
	if len(c.out) > 0 || c.quit {
		lp.answered = append(lp.answered, c)
	}
}

// flush writes c's replies; it returns false when c has left the loop,
// with in (input not served yet), or was closed.
func (lp *loop) flush(c *conn, in []byte) bool {
	var err error
	switch c.out, err = evloop.Flush(c.fd, c.out); {
	case err == unix.EAGAIN:
		// A client that does not read: its goroutine waits for it, up
		// to CommandTimeout.
		lp.leave(c, in)
		return false
	case err != nil:
		lp.drop(c)
		return false
	}
	return true
}

// parse frames one command at the start of in: an array of bulk strings,
// every part present and within the loop's limits. An empty or null
// array ("*0", "*-1") frames as no arguments, which Redis skips. ok is
// false for anything else, which the connection's own reader then reads.
func (lp *loop) parse(in []byte, authed bool) (args [][]byte, rest []byte, ok bool) {
	maxArgs, maxBulk := loopMaxArgs, smallArg
	if !authed {
		maxArgs, maxBulk = maxUnauthArgs, maxUnauthBulk
	}
	if len(in) == 0 || in[0] != '*' {
		return nil, nil, false
	}
	if len(in) > 1 && in[1] == '-' {
		// A null array ("*-1"), which Redis skips: no arguments.
		if n, in, ok := loopNumber(in[2:]); ok && n > 0 {
			return lp.args[:0], in, true
		}
		return nil, nil, false
	}
	n, in, ok := loopNumber(in[1:])
	if !ok || n > maxArgs {
		return nil, nil, false
	}
	args = lp.args[:0]
	for range n {
		if len(in) == 0 || in[0] != '$' {
			return nil, nil, false
		}
		var size int
		if size, in, ok = loopNumber(in[1:]); !ok || size > maxBulk || len(in) < size+2 || in[size] != '\r' || in[size+1] != '\n' {
			return nil, nil, false
		}
		args = append(args, in[:size:size])
		in = in[size+2:]
	}
	lp.args = args
	return args, in, true
}

// loopNumber reads a decimal of at most 9 digits, without a leading zero
// ("0" alone), and its CRLF: what else Redis takes (a minus) the
// connection's reader reads, and what Redis refuses it names.
func loopNumber(in []byte) (int, []byte, bool) {
	v := 0
	for i, ch := range in {
		switch {
		case ch == '\r':
			if i == 0 || i > 1 && in[0] == '0' || i+1 >= len(in) || in[i+1] != '\n' {
				return 0, nil, false
			}
			return v, in[i+2:], true
		case ch < '0' || ch > '9' || i == 9:
			return 0, nil, false
		}
		v = v*10 + int(ch-'0')
	}
	return 0, nil, false
}

// leave hands c to a goroutine of its own, which reads in (input the
// loop did not serve) before the socket, after writing c.out.
//
// The goroutine's net.Conn is a descriptor more (see [evloop.Give]).
// Out of descriptors for a moment, the connection waits for one on a
// goroutine, as the accept loop does (5 ms, doubling up to 1 s), until
// the server closes or CommandTimeout passes: its commands and replies
// wait with it, and the loop goes on.
func (lp *loop) leave(c *conn, in []byte) {
	lp.remove(c)
	c.leave = false
	if !c.authed {
		lp.unauthed.Add(-1)
	}
	fd := c.fd
	nc, err := evloop.Give(fd, "resp")
	s := lp.s
	// c.lp and c.nc change under s.mu: an eviction past
	// MaxUnauthenticated wakes c through whichever is set (see
	// Server.listUnauthed).
	s.mu.Lock()
	defer s.mu.Unlock()
	c.fd, c.lp = -1, nil
	c.pre = bytes.Clone(in)
	if err != nil && evloop.OutOfFds(err) && !s.closed {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			nc, err := evloop.GiveWaiting(fd, "resp", s.stop.Done(), s.cfg.CommandTimeout, wire.BackOffAccept)
			s.mu.Lock()
			defer s.mu.Unlock()
			s.resume(c, fd, nc, err)
		}()
		return
	}
	s.resume(c, fd, nc, err)
}

// resume serves c, which left its loop, on a goroutine of its own
// through nc, the net.Conn Give made of fd; or, when Give failed (err)
// or the server is closing, closes it. s.mu is held.
func (s *Server) resume(c *conn, fd int, nc net.Conn, err error) {
	if err != nil {
		if !s.closed {
			s.cfg.Logger.Warn("resp: a connection could not leave its loop; closing it", "err", err)
		}
		unix.Close(fd)
		s.unlist(c)
		return
	}
	if s.closed {
		nc.Close()
		s.unlist(c)
		return
	}
	c.nc = nc
	if !c.authed {
		nc.SetReadDeadline(c.authBy)
	}
	s.goServe(c)
}

// remove stops watching c.
func (lp *loop) remove(c *conn) { lp.set.Remove(c.fd) }

// drop closes c.
func (lp *loop) drop(c *conn) {
	lp.remove(c)
	unix.Close(c.fd)
	if !c.authed {
		lp.unauthed.Add(-1)
	}
	lp.s.forget(c)
}

// expire closes the connections that did not authenticate in time, and
// those evicted past MaxUnauthenticated (which poked the loop), with
// their error if the socket takes it at once.
func (lp *loop) expire() {
	now := time.Now()
	late := lp.set.Filter(func(c *conn) bool { return !c.authed && (now.After(c.authBy) || c.evicted.Load()) })
	for _, c := range late {
		if c.isEvicted() {
			c.writeError(lp.s.evictedMsg())
			evloop.Flush(c.fd, c.out)
		}
		lp.drop(c)
	}
}

func (lp *loop) closeAll() { lp.set.Close(lp.drop) }
