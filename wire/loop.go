package wire

import (
	"bytes"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/internal/evloop"
	"github.com/tqgo/tq/internal/invariants"
)

// A loop serves many connections from one goroutine while they send only
// small requests that inline handlers answer (the controller's KV puts
// and gets, its metadata operations, pings): it waits for input on all of
// them at once (epoll), reads what arrived, runs the complete requests
// found and writes their replies, with no goroutine parked and woken per
// request. That park and wake, and the read that finds nothing before it,
// were most of what a small request cost the server on top of its two
// syscalls (profiles of 1 KiB KV puts and gets: ~40% of its CPU).
//
// A connection's goroutine stays its owner: it hands the connection to a
// loop when it has nothing else to do (nothing buffered, no handler
// running, no reply waiting to be written) and the requests before were
// ones a loop serves, right after the handshake included, and waits
// until the loop gives it back. The loop gives it back, with the input it
// read but did not serve and the replies it could not write, for anything
// it does not serve: a request for a handler that runs in a goroutine of
// its own (an inline one's with a body over InlineMaxBody included) or
// over loopMax bytes, a frame cut short by the network or
// malformed (the goroutine's reader names what was wrong), replies the
// socket does not take at once, a server shutting down. From there the
// goroutine serves it as before, with its deadlines, limits and budgets,
// and hands it back to a loop once idle again. The loop closes what it
// holds when the peer closes, when the connection is idle past
// IdleTimeout, and when the goroutine asks (the connection or the server
// is closing).
//
// A pass of the loop serves every connection with input first and writes
// their replies after (as Redis does, before it waits again): a reply
// wakes its client, and on a small host the woken client takes a CPU the
// loop was still using for the pass, so replies written one by one held
// back the requests behind them. Replies to a long pipeline still go out
// as they collect. (BenchmarkSmallKV, 1 KiB SET+GET from 16 clients with
// a connection each, on a 2-vCPU host, 8 interleaved runs: 82.9k → 89.6k
// ops/s through the Go client, 78.5k → 87.0k through a minimal client.)
type loop struct {
	s    *Server
	set  *evloop.Set[*serverConn]
	scan time.Duration // how often idle connections are looked for

	mu       sync.Mutex
	released []*serverConn // connections to close, from their goroutines

	// Used by the loop's goroutine only.
	buf      []byte
	read     int     // the bytes of buf the last read filled (invariants only)
	req      Request // the request being served (see next)
	now      time.Time
	scanned  time.Time
	answered []*serverConn // served this pass, replies not written yet
}

// onLoop is a connection's state for loops. fd, out, unflushed and
// lastIn belong to the loop while it has the connection, and to the
// connection's goroutine otherwise (back passes them over).
type onLoop struct {
	fd        int       // the loop's duplicate of the socket
	out       []byte    // replies not written yet
	unflushed int       // requests answered in out, in flight until written
	lastIn    time.Time // the last input the loop read
	back      chan loopExit
	noLoop    bool // the connection cannot go to a loop
}

// loopExit is how a loop gives a connection back to its goroutine.
type loopExit struct {
	fd        int // the socket, or -1: the loop closed it
	pre       []byte
	out       []byte
	unflushed int
}

const (
	loopRead = 64 << 10 // bytes one read may return
	// loopMax bounds a request a loop serves: its body and its payload.
	loopMax = 64 << 10
	// loopStreak is how many requests in a row a loop could have served
	// send a connection back to one: a connection that mixes others in
	// does not go back and forth for each.
	loopStreak = 2
)

// loopable reports whether a loop serves requests like h.
func (s *Server) loopable(h Header) bool {
	return (s.inlines(h) || s.try(h.Op) != nil || h.Op == OpPing || h.Op == OpCancel) && h.BodyLen <= loopMax && h.PayloadLen <= loopMax
}

// mayLoop reports whether the connection may go to a loop now: it has no
// session, no handler runs in a goroutine and its replies are written.
func (c *serverConn) mayLoop() bool {
	if c.noLoop || c.sess != nil || c.async.Load() != 0 {
		return false
	}
	c.w.uncork()
	return c.w.idle()
}

// toLoop hands the connection to a loop and waits for it back: nc is its
// socket again and pre the input the loop read but did not serve (its
// replies so far are written or queued). nc is nil when no loop took the
// connection (it never goes to one again); ok is false when the
// connection was closed meanwhile.
func (c *serverConn) toLoop() (nc net.Conn, pre []byte, ok bool) {
	lp := c.s.pickLoop()
	if lp == nil {
		c.noLoop = true
		return nil, nil, true
	}
	c.ncMu.Lock()
	fd, took := evloop.Take(c.nc)
	c.ncMu.Unlock()
	if !took {
		c.noLoop = true
		return nil, nil, true
	}
	if c.back == nil {
		c.back = make(chan loopExit, 1)
	}
	var x loopExit
	if !lp.add(c, fd) {
		c.noLoop = true
		x = loopExit{fd: fd}
	} else {
		select {
		case x = <-c.back:
		case <-c.done:
			lp.release(c)
			x = <-c.back
		}
	}
	if x.fd < 0 {
		return nil, nil, false
	}
	nc, err := c.give(x.fd)
	if err != nil {
		select {
		case <-c.done:
		default:
			c.s.log.Warn("wire: a connection could not leave its loop; closing it", "peer", c.peer.GetName(), "err", err)
		}
		c.s.inflight.Add(-x.unflushed) // their replies are dropped
		return nil, nil, false
	}
	// net.FileConn gave the socket Go's own keepalive: the peer
	// timeout's again (TCP_USER_TIMEOUT stays with the socket).
	if err := setKeepAlive(nc, c.s.cfg.PeerTimeout); err != nil {
		c.s.log.Debug("wire: cannot set the peer timeout", "peer", nc.RemoteAddr(), "err", err)
	}
	c.ncMu.Lock()
	c.nc = nc
	c.ncMu.Unlock()
	select {
	case <-c.done:
		// close read the old socket before it saw this one.
		nc.Close()
		c.s.inflight.Add(-x.unflushed)
		return nil, nil, false
	default:
	}
	c.w.nc, c.w.deadline = nc, time.Time{}
	if len(x.out) > 0 || x.unflushed > 0 {
		n := x.unflushed
		c.w.send(&outFrame{buf: x.out, written: make(chan error, 1), done: func() { c.s.inflight.Add(-n) }})
	}
	return nc, x.pre, true
}

// give turns fd, the socket a loop gave back, into the connection's
// net.Conn, which takes a descriptor more. Out of descriptors, it waits
// for one as the accept loop does (5 ms, doubling up to 1 s), until the
// connection closes or FrameTimeout passes: the input and replies the
// loop handed over wait with it. fd is closed when it fails.
func (c *serverConn) give(fd int) (net.Conn, error) {
	nc, err := evloop.GiveWaiting(fd, "wire", c.done, c.s.cfg.FrameTimeout, BackOffAccept)
	if err != nil {
		unix.Close(fd)
	}
	return nc, err
}

// pickLoop returns the next loop, starting the loops the first time; nil
// when there are none or the server is draining.
func (s *Server) pickLoop() *loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining || s.cfg.Loops < 0 {
		return nil
	}
	if s.loops == nil {
		var err error
		for range s.cfg.Loops {
			var lp *loop
			if lp, err = newLoop(s); err != nil {
				break
			}
			s.loops = append(s.loops, lp)
			s.loopsWG.Go(lp.run)
		}
		if s.loops == nil {
			if evloop.OutOfFds(err) {
				// For now: the next connection tries again, rather than
				// every connection keeping a goroutine for good.
				s.log.Debug("wire: no event loop yet, out of descriptors; this connection keeps a goroutine", "err", err)
				return nil
			}
			s.log.Warn("wire: no event loop; connections keep a goroutine each", "err", err)
			s.cfg.Loops = -1
			return nil
		}
	}
	lp := s.loops[s.nextLoop%len(s.loops)]
	s.nextLoop++
	return lp
}

// stopLoops ends the loops once no connection is left to them.
func (s *Server) stopLoops() {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	for _, lp := range loops {
		lp.set.Stop()
	}
	s.loopsWG.Wait()
}

// newLoopSet makes a loop's epoll set; a variable for tests.
var newLoopSet = evloop.NewSet[*serverConn]

func newLoop(s *Server) (*loop, error) {
	set, err := newLoopSet()
	if err != nil {
		return nil, err
	}
	return &loop{
		s: s, set: set,
		scan: min(time.Second, s.cfg.IdleTimeout/4),
		buf:  make([]byte, loopRead),
	}, nil
}

// add gives c, whose socket is fd, to the loop; false if the loop has
// stopped or cannot watch fd.
func (lp *loop) add(c *serverConn, fd int) bool {
	return lp.set.Add(c, func() (int, bool) {
		c.fd, c.lastIn = fd, time.Now()
		return fd, true
	}) == nil
}

// release asks the loop to close c, if it still has it; c's goroutine
// then hears back.
func (lp *loop) release(c *serverConn) {
	lp.mu.Lock()
	lp.released = append(lp.released, c)
	lp.mu.Unlock()
	lp.set.Poller.Poke()
}

func (lp *loop) run() {
	defer lp.closeAll()
	timeout := int(max(lp.scan/time.Millisecond, 1))
	for !lp.set.Stopped() {
		ready, err := lp.set.Poller.Wait(timeout)
		if err != nil {
			lp.s.log.Error("wire: epoll_wait failed; closing the loop's connections", "err", err)
			return
		}
		lp.now = time.Now()
		for _, fd := range ready {
			if c, ok := lp.set.Lookup(fd); ok {
				lp.serve(c)
			}
		}
		for i, c := range lp.answered {
			lp.flush(c, nil)
			lp.answered[i] = nil
		}
		lp.answered = lp.answered[:0]
		// Connections whose goroutines asked for them to be closed, if
		// the loop still has them. A goroutine that asked waits to hear
		// back: it does not touch c.fd meanwhile.
		lp.mu.Lock()
		released := lp.released
		lp.released = nil
		lp.mu.Unlock()
		for _, c := range released {
			if lp.set.Has(c.fd, c) {
				lp.close(c)
			}
		}
		if lp.now.Sub(lp.scanned) >= lp.scan {
			lp.expire()
		}
	}
}

// serve reads what arrived on c and runs the complete requests in it;
// their replies are written at the end of the pass (answered).
func (lp *loop) serve(c *serverConn) {
	if invariants.Enabled {
		// The requests of the last read were served: a Body a handler
		// kept reads poison now, not another frame's bytes by chance.
		for i := range lp.buf[:lp.read] {
			lp.buf[i] = 0xdb
		}
		lp.read = 0
	}
	n, err := evloop.Read(c.fd, lp.buf)
	if invariants.Enabled {
		lp.read = max(n, 0)
	}
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil || n == 0:
		if n == 0 && err == nil || closedByPeer(err) {
			c.byPeer.Store(true)
		}
		lp.close(c) // the peer closed, or the connection broke
		return
	}
	c.lastIn = lp.now
	in := lp.buf[:n]
	for len(in) >= HeaderSize {
		h, err := DecodeHeader(in[:HeaderSize])
		if err != nil || h.Flags&FlagReply != 0 || !lp.s.loopable(h) {
			break
		}
		size := HeaderSize + int(h.BodyLen) + int(h.PayloadLen)
		if len(in) < size || !lp.request(c, h, in[HeaderSize:size]) {
			break
		}
		in = in[size:]
		// Replies to a long pipeline go out as they collect.
		if len(c.out) >= loopRead && !lp.flush(c, in) {
			return
		}
	}
	if len(in) > 0 {
		lp.exit(c, in)
		return
	}
	if len(c.out) > 0 {
		lp.answered = append(lp.answered, c)
	}
}

// request serves one request, whose body and payload are frame; false
// when c's goroutine must serve it.
func (lp *loop) request(c *serverConn, h Header, frame []byte) bool {
	s := lp.s
	if h.Op == OpCancel {
		// Nothing runs in a goroutine while a loop has the connection:
		// the request it names has been answered.
		if h.PayloadLen != 0 {
			return false // malformed: the goroutine closes the connection
		}
		s.bytesIn.Add(int64(HeaderSize) + int64(h.BodyLen))
		return true
	}
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return false // the goroutine says the server is shutting down
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	req := lp.next(frame[:h.BodyLen])
	req.Header, req.Peer, req.PeerUID, req.PeerPID = h, c.peer, c.peerUID, c.peerPID
	req.mem, req.left = frame[h.BodyLen:], h.PayloadLen
	if s.cfg.Observer != nil {
		req.start = time.Now()
	}
	req.rw = ReplyWriter{c: c, h: h, loop: true}
	req.handler = s.handler(h.Op)
	if h.Op == OpPing {
		req.handler = pong
	}
	if try := s.try(h.Op); try != nil {
		if !c.tryHandle(c.ctx, try, req) {
			// It would wait: the connection's goroutine runs it.
			s.inflight.Done()
			if invariants.Enabled {
				req.kill()
			} else {
				lp.req = Request{}
			}
			return false
		}
		c.served(req)
	} else {
		c.handle(c.ctx, req)
	}
	s.bytesIn.Add(int64(HeaderSize) + int64(h.BodyLen) + int64(h.PayloadLen))
	// Cleared, so that between requests the loop keeps nothing alive
	// through it (the connection, a reply's view of a value).
	if invariants.Enabled {
		req.kill()
	} else {
		lp.req = Request{}
	}
	c.unflushed++
	return true
}

// next returns the loop's request, cleared, with body as its Body. A loop
// serves one request at a time and its handler is done with it when it
// returns (see [HandlerFunc]), so every request of the loop is served in
// this one, and its Body is the frame in the loop's read buffer, which
// holds still until the next read: serving a small request allocates
// nothing here. (A new request per frame was more than half of the bytes
// the controller allocated for a 1 KiB KV_SET or KV_GET_VALUE, which its
// garbage collector paid for.) With invariants, every request is one of
// its own, which the loop kills once served (see [Request.kill]), so that
// a handler that kept it and uses it later panics rather than reads
// another request.
func (lp *loop) next(body []byte) *Request {
	if invariants.Enabled {
		return &Request{Body: body[:len(body):len(body)]}
	}
	lp.req = Request{}
	lp.req.Body = body[:len(body):len(body)]
	return &lp.req
}

// flush writes c's replies; it returns false when c has left the loop,
// with in (input not served yet), or was closed.
func (lp *loop) flush(c *serverConn, in []byte) bool {
	if len(c.out) == 0 {
		return true
	}
	n := len(c.out)
	var err error
	c.out, err = evloop.Flush(c.fd, c.out)
	lp.s.bytesOut.Add(int64(n - len(c.out)))
	switch {
	case err == unix.EAGAIN:
		// A peer that does not read: its goroutine waits for it, up to
		// WriteTimeout.
		lp.exit(c, in)
		return false
	case err != nil:
		if closedByPeer(err) {
			c.byPeer.Store(true)
		}
		lp.close(c)
		return false
	}
	lp.s.writes.Add(1)
	lp.s.inflight.Add(-c.unflushed)
	c.unflushed = 0
	return true
}

// exit gives c back to its goroutine, with in (input not served) and its
// replies not written.
func (lp *loop) exit(c *serverConn, in []byte) {
	lp.remove(c)
	x := loopExit{fd: c.fd, pre: bytes.Clone(in), out: c.out, unflushed: c.unflushed}
	c.fd, c.out, c.unflushed = -1, nil, 0
	c.back <- x
}

// close closes c's socket and tells its goroutine.
func (lp *loop) close(c *serverConn) {
	lp.remove(c)
	unix.Close(c.fd)
	lp.s.inflight.Add(-c.unflushed)
	c.fd, c.out, c.unflushed = -1, nil, 0
	c.back <- loopExit{fd: -1}
}

func (lp *loop) remove(c *serverConn) { lp.set.Remove(c.fd) }

// expire closes the connections idle past IdleTimeout.
func (lp *loop) expire() {
	lp.scanned = lp.now
	idle := lp.set.Filter(func(c *serverConn) bool { return lp.now.Sub(c.lastIn) > lp.s.cfg.IdleTimeout })
	for _, c := range idle {
		lp.close(c)
	}
}

func (lp *loop) closeAll() { lp.set.Close(lp.close) }
