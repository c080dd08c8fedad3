package resp

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tidwall/redcon"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/internal/linger"
	"github.com/tqgo/tq/storage"
)

// Config configures a RESP endpoint.
type Config struct {
	// Token is the secret AUTH must give; "" lets every client in. At
	// most 4096 bytes (auth.MaxToken): an argument before AUTH may be
	// as long.
	Token string
	// Partition is the partition a connection starts with (SELECT 0);
	// default "default".
	Partition string
	// Field is the field SET and GET read and write; default "value".
	Field string
	// MaxValue bounds one argument, so one value (default 512 MiB, as
	// Redis's proto-max-bulk-len), and what a connection reads ahead of
	// its commands while a reply waits for the client to read (see
	// conn.write).
	MaxValue int64
	// LargeInFlight bounds the bytes of arguments larger than 64 KiB,
	// and of the smaller arguments of a command past its first MiB (and
	// their slices past its first 4096), being read or served across all connections (default 1 GiB, at
	// least MaxValue); a connection that would exceed it waits up to
	// CommandTimeout, and a command that exceeds it alone is refused.
	LargeInFlight int64
	// MaxClients bounds connections (default 10000, as Redis).
	MaxClients int
	// MaxUnauthenticated bounds the connections that have not
	// authenticated yet, where a Token is set (0:
	// DefaultMaxUnauthenticated, or a quarter of MaxClients where that is
	// smaller; negative: no limit). They count against MaxClients too. A
	// connection accepted past it makes room by closing the oldest
	// connection that has not authenticated, answered an -ERR line that
	// names the limit: a client sends its AUTH at once and is answered
	// within a round trip, so the oldest is the one most likely never to
	// authenticate. Peers that open connections and never authenticate
	// thus hold at most MaxUnauthenticated of MaxClients, for at most
	// AuthTimeout each, and cannot lock out a client unless they open
	// MaxUnauthenticated connections within its round trip. A connection
	// leaves the count when its AUTH (or HELLO AUTH) succeeds, or when it
	// closes. Closings are logged at most once a second.
	MaxUnauthenticated int
	// CommandTimeout bounds how long the rest of a command may take to
	// arrive once its first byte has, how long a reply may take to be
	// written, and how long a write waits for room in a full storage unit
	// before it is refused with OOM (default 30 s). AuthTimeout bounds how long a client
	// may take to authenticate (default 10 s).
	CommandTimeout, AuthTimeout time.Duration
	// Loops is how many event loops serve connections while they send
	// small commands that need not wait (0: half the CPUs Go may use, at
	// least one; negative: none, a goroutine per connection). A
	// connection leaves its loop for a goroutine of its own, for good, at
	// its first command that may wait or that the loop does not take (see
	// loop.go). With a durable controller a SET always leaves (its
	// commit waits for the log); a GET stays while what it reads is
	// durable already.
	Loops  int
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Partition == "" {
		c.Partition = "default"
	}
	if c.Field == "" {
		c.Field = "value"
	}
	if c.MaxValue <= 0 {
		c.MaxValue = DefaultMaxValue
	}
	if c.LargeInFlight <= 0 {
		c.LargeInFlight = 1 << 30
	}
	c.LargeInFlight = max(c.LargeInFlight, c.MaxValue)
	if c.MaxClients <= 0 {
		c.MaxClients = 10000
	}
	if c.MaxUnauthenticated == 0 {
		c.MaxUnauthenticated = min(DefaultMaxUnauthenticated, max(1, c.MaxClients/4))
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = 30 * time.Second
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Loops == 0 {
		c.Loops = max(1, runtime.GOMAXPROCS(0)/2)
	}
	return c
}

// DefaultMaxUnauthenticated is Config.MaxUnauthenticated's default
// (where a quarter of MaxClients is not smaller): an AUTH is answered
// within a round trip, so even a reconnect storm of a few hundred clients
// has far fewer unauthenticated at once and does not close one another's
// connections; 256 hold 1/40 of the default MaxClients, so idle peers
// that never authenticate leave the rest to clients that do. The quarter
// keeps a small MaxClients mostly for authenticated clients too.
const DefaultMaxUnauthenticated = 256

// Server serves the Redis protocol over a controller and a client of
// storage units in the same process. See wire/resp.md for the mapping of
// commands onto partitions, keys, fields and tags.
type Server struct {
	cfg   Config
	st    *store
	large *semaphore.Weighted
	ids   atomic.Int64

	mu    sync.Mutex
	ls    []net.Listener
	conns map[*conn]struct{}
	// unauthed lists the connections in conns that have not
	// authenticated, oldest first (counted against MaxUnauthenticated);
	// nevicted counts those in conns that were closed past it and have
	// not gone yet: they no longer count against MaxClients.
	unauthed     list.List
	nevicted     int
	evictLogged  time.Time // when a closing past MaxUnauthenticated was last logged
	closed       bool
	loopsStopped bool
	wg           sync.WaitGroup

	stop   context.Context
	cancel context.CancelFunc
	// drain is canceled when Shutdown begins: connections end between
	// commands, and waits for a change end (see Shutdown).
	drain        context.Context
	drainCancel  context.CancelFunc
	acceptLogged atomic.Bool
	turningAway  atomic.Int32 // connections being turned away (see turnAway)

	// loops serve connections while their commands need not wait
	// (started by the first Serve; none when Config.Loops < 0); next
	// picks the loop of the next connection.
	loops []*loop
	next  int
}

// NewServer returns an endpoint over a controller and storage units in
// this process (registered with it). A controller with a journal answers
// once what a command changed and saw is durable.
func NewServer(ctrl *controller.Controller, units []*storage.Unit, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := partitionProblem([]byte(cfg.Partition)); err != nil {
		return nil, fmt.Errorf("resp: starting partition: %w", err)
	}
	if len(cfg.Token) > auth.MaxToken {
		// An argument before AUTH may be as long as the token: a peer
		// that never authenticates would make the server buffer as much.
		return nil, fmt.Errorf("resp: Token of %d bytes, longer than the %d a token may have: %w", len(cfg.Token), auth.MaxToken, engine.ErrInvalid)
	}
	st, err := newStore(ctrl, units, cfg.CommandTimeout)
	if err != nil {
		return nil, err
	}
	stop, cancel := context.WithCancel(context.Background())
	drain, drainCancel := context.WithCancel(context.Background())
	return &Server{
		cfg:         cfg,
		st:          st,
		large:       semaphore.NewWeighted(cfg.LargeInFlight),
		conns:       map[*conn]struct{}{},
		stop:        stop,
		cancel:      cancel,
		drain:       drain,
		drainCancel: drainCancel,
	}, nil
}

// Serve accepts connections on l until the server closes; it returns nil
// after Shutdown or Close. A failed Accept (out of file descriptors) is
// logged once and retried after a pause: it never ends the listener.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed || s.drain.Err() != nil {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.ls = append(s.ls, l)
	if s.loops == nil && s.cfg.Loops > 0 {
		s.loops = s.startLoops(s.cfg.Loops)
	}
	s.mu.Unlock()
	pause := 5 * time.Millisecond
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.stop.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !s.acceptLogged.Swap(true) {
				s.cfg.Logger.Warn("resp: accept failed; retrying", "err", err)
			}
			select {
			case <-time.After(pause):
			case <-s.stop.Done():
				return nil
			}
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		c := s.newConn(nc)
		s.mu.Lock()
		switch {
		case s.closed || s.drain.Err() != nil:
			s.mu.Unlock()
			nc.Close()
			return nil
		case len(s.conns)-s.nevicted >= s.cfg.MaxClients:
			s.turnAway(nc)
			s.mu.Unlock()
			continue
		}
		s.conns[c] = struct{}{}
		logEvict := !c.authed && s.listUnauthed(c)
		if !s.adopt(c) {
			s.goServe(c)
		}
		s.mu.Unlock()
		if logEvict {
			s.cfg.Logger.Warn("resp: closing the oldest unauthenticated connections past the limit", "limit", s.cfg.MaxUnauthenticated)
		}
	}
}

// listUnauthed lists c, new and not authenticated, among the
// connections that must still authenticate; past MaxUnauthenticated it
// first evicts the oldest of them, which its loop or goroutine then
// answers with evictedMsg and closes (see loop.expire, deadlineReader,
// conn.authenticate). It returns whether to log that (at most once a
// second). s.mu is held.
func (s *Server) listUnauthed(c *conn) (logEvict bool) {
	if limit := s.cfg.MaxUnauthenticated; limit > 0 && s.unauthed.Len() >= limit {
		old := s.unauthed.Remove(s.unauthed.Front()).(*conn)
		old.unauthedAt = nil
		old.evicted.Store(true)
		s.nevicted++
		// Wakes it wherever it is served (c.lp and c.nc change under
		// s.mu): its loop's expiry pass, or its goroutine's read. A
		// connection between the two, leaving its loop, is given its
		// goroutine under s.mu, which looks before it reads.
		switch {
		case old.lp != nil:
			old.lp.set.Poller.Poke()
		case old.nc != nil:
			old.nc.SetReadDeadline(time.Unix(1, 0))
		}
		if now := time.Now(); now.Sub(s.evictLogged) >= time.Second {
			s.evictLogged, logEvict = now, true
		}
	}
	c.unauthedAt = s.unauthed.PushBack(c)
	return logEvict
}

// evictedMsg is the error a connection evicted past MaxUnauthenticated
// is answered before it is closed.
func (s *Server) evictedMsg() string {
	return fmt.Sprintf("ERR max number of unauthenticated clients reached (%d, MaxUnauthenticated); this one, the oldest, is closed", s.cfg.MaxUnauthenticated)
}

// authenticated takes c, which has just authenticated, out of the
// connections that must still authenticate; false if it was evicted
// first (it is to be closed). Once out, it is not evicted.
func (s *Server) authenticated(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.evicted.Load() {
		return false
	}
	if c.unauthedAt != nil {
		s.unauthed.Remove(c.unauthedAt)
		c.unauthedAt = nil
	}
	return true
}

// unlist takes c, which ends, out of the server's connections. s.mu is
// held.
func (s *Server) unlist(c *conn) {
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	if c.unauthedAt != nil {
		s.unauthed.Remove(c.unauthedAt)
		c.unauthedAt = nil
	}
	if c.evicted.Load() {
		s.nevicted--
	}
}

// maxTurningAway bounds the connections being turned away past
// MaxClients at once; past it, one is closed without an answer.
const maxTurningAway = 64

// turnAway answers a connection past MaxClients, as Redis does, and
// closes it lingering (its client may have sent its AUTH already: see
// package linger), on a goroutine of its own so that a peer that does not
// read holds no accept; 1 s for each at most, maxTurningAway at once.
// s.mu is held.
func (s *Server) turnAway(nc net.Conn) {
	if s.turningAway.Add(1) > maxTurningAway {
		s.turningAway.Add(-1)
		nc.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.turningAway.Add(-1)
		defer nc.Close()
		stop := context.AfterFunc(s.stop, func() { nc.Close() })
		defer stop()
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := nc.Write(redcon.AppendError(nil, "ERR max number of clients reached")); err == nil {
			linger.Drain(nc, time.Second)
		}
	}()
}

// adopt gives c to the next loop, if there are loops; s.mu is held.
func (s *Server) adopt(c *conn) bool {
	if len(s.loops) == 0 {
		return false
	}
	lp := s.loops[s.next%len(s.loops)]
	s.next++
	return lp.adopt(c)
}

// goServe serves c on a goroutine of its own; s.mu is held.
func (s *Server) goServe(c *conn) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.serve()
		s.forget(c)
	}()
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	s.unlist(c)
	s.mu.Unlock()
}

// Shutdown stops the endpoint gracefully: it stops accepting, closes
// each connection once it waits for its next command (at once for those
// waiting now) and lets the commands in flight finish, the rest of a
// command being read included, their replies written; a TQ.CHANGES
// waiting for a change answers that none came. It waits for that until
// ctx ends, then closes the server as Close does, cutting off what still
// runs (and returning an error wrapping ctx's).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.drainCancel()
	for _, l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		if c.nc != nil {
			// Wakes a connection waiting for input: between commands it
			// ends; in the middle of one it reads on (see deadlineReader).
			c.nc.SetReadDeadline(time.Now())
		}
	}
	// A loop finishes its pass, writes its replies, and closes its
	// connections; one that was reading a command cut short has left it
	// for a goroutine, which reads on.
	s.stopLoops()
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(idle)
	}()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = fmt.Errorf("resp: shutdown with commands in flight: %w", ctx.Err())
	}
	return errors.Join(err, s.Close())
}

// Close stops the listeners and every connection, and waits for them.
// It may follow Shutdown.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		if c.nc != nil {
			c.nc.Close()
		}
	}
	s.stopLoops()
	s.mu.Unlock()
	s.cancel()
	s.drainCancel()
	s.wg.Wait()
	return s.st.cl.Close()
}

// stopLoops stops the loops, once: a loop that stopped has closed its
// poller. s.mu is held.
func (s *Server) stopLoops() {
	if s.loopsStopped {
		return
	}
	s.loopsStopped = true
	for _, lp := range s.loops {
		lp.stop()
	}
}

// conn is one client connection. Its commands run one after another on
// its goroutine; replies collect in out and are written before the
// connection waits for more input (see deadlineReader), or once 64 KiB
// have collected. A connection starts on a loop where there are loops
// (lp and fd set, nc nil) and may leave it for a goroutine of its own.
type conn struct {
	s      *Server
	nc     net.Conn
	lp     *loop
	fd     int
	remote string
	local  string // the address it came to (CLIENT INFO's laddr)
	// pre is input the loop read but did not serve, read first once
	// the connection has left the loop; leave is set by a command the
	// loop ran that must run again on the connection's own goroutine
	// (it would wait, or its reply is large).
	pre       []byte
	leave     bool
	rd        *reader
	out       []byte
	id        int64
	name      string
	partition string
	authed    bool
	// quit ends the connection after the command; werr is the write
	// that failed, after which nothing more is written (see write).
	quit bool
	werr error
	// once is the running command's (see command.once).
	once bool
	// multi holds a transaction's commands (MULTI) until EXEC: copies,
	// queuedBytes of them; aborted when one was refused as it was queued.
	multi       bool
	aborted     bool
	queued      [][][]byte
	queuedBytes int
	// armed is true while the read deadline bounds a command's rest,
	// that of command armedFor (counted as c.rd.begun counts them);
	// authBy is when an unauthenticated client must have authenticated.
	armed    bool
	armedFor uint64
	armedBy  time.Time
	authBy   time.Time
	// authFails counts the AUTHs that failed (see maxAuthFailures).
	authFails int
	// unauthedAt is c's element of s.unauthed while it is listed there
	// (under s.mu); evicted is set, under s.mu too, once it was evicted
	// from there past MaxUnauthenticated: it is answered evictedMsg and
	// closed, and may no longer authenticate.
	unauthedAt *list.Element
	evicted    atomic.Bool
	// aheadCharged is what pre's buffer holds of the budget for large
	// arguments, where a write that waited read ahead into it (see
	// writeReadingAhead); raw is nc's raw connection, for writes that
	// must not wait (nil: none), and wb, wn and wErrno what writeFD
	// writes through it.
	aheadCharged int64
	raw          syscall.RawConn
	rawChecked   bool
	writeFn      func(fd uintptr) bool // c.writeFD, bound once (a method value allocates)
	wb           []byte
	wn           int
	wErrno       error
	large        int64 // bytes of the budget the current command holds
	ctx          context.Context
	// owe is what the replies in out wait for before they go out (see
	// owed, settle).
	owe owed
}

// owed is what replies held to be sent wait for: the log record that
// makes durable the changes they acknowledge (index), and the cells
// those changes replaced, freed once it is. A connection serving a
// pipeline of SETs, HSETs, DELs or HDELs on a durable controller thus
// waits for the log once for all of those it read together, as Redis's
// appendfsync always does, where waiting for each one's own record took
// a group commit per command (about 4k SET/s from one client however
// deep its pipeline).
type owed struct {
	index uint64
	frees []owedFree
}

type owedFree struct {
	partition string
	keys      []string
	locs      []engine.CellLoc
}

func (o *owed) add(index uint64, partition string, keys []string, locs []engine.CellLoc) {
	o.index = max(o.index, index)
	if len(locs) > 0 {
		o.frees = append(o.frees, owedFree{partition, keys, locs})
	}
}

// owing is where a command run on the connection's goroutine notes what
// its reply is owed; nil on a loop, whose commands do not wait.
func (c *conn) owing() *owed {
	if c.lp != nil {
		return nil
	}
	return &c.owe
}

// settle waits for what the replies held are owed, then frees the cells
// their changes replaced. On an error (the server closing, the log
// failed) the replies must not go out: the changes may not be durable.
// The frees are then left to wait on their own (see [embedded.Freer]).
func (c *conn) settle() error { return c.owe.settle(c.ctx, c.s.st) }

// settle waits for o.index, then frees o's cells. A wait that fails
// leaves o.index owed, so that every later settle fails too: the replies
// held never go out.
func (o *owed) settle(ctx context.Context, st *store) error {
	if o.index == 0 && len(o.frees) == 0 {
		return nil
	}
	err := st.ctrl.WaitIndex(ctx, o.index)
	for i, f := range o.frees {
		// Durable already (or failing as the wait did): no wait more.
		st.free(ctx, f.partition, f.keys, f.locs)
		o.frees[i] = owedFree{}
	}
	o.frees = o.frees[:0]
	if err == nil {
		o.index = 0
	}
	return err
}

func (s *Server) newConn(nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, fd: -1, remote: nc.RemoteAddr().String(), local: nc.LocalAddr().String(), id: s.ids.Add(1), partition: s.cfg.Partition}
	c.ctx = context.WithValue(s.stop, connKey{}, c) // see whileWaiting
	c.rd = newReader(deadlineReader{c}, s.cfg.MaxValue)
	c.rd.large = c.takeLarge
	c.rd.unauthBulk = max(maxUnauthBulk, len(s.cfg.Token))
	c.authed = s.cfg.Token == ""
	c.rd.authed = c.authed
	if !c.authed {
		c.authBy = time.Now().Add(s.cfg.AuthTimeout)
		nc.SetReadDeadline(c.authBy)
	}
	return c
}

// errEvicted ends the read of a connection evicted past
// MaxUnauthenticated.
var errEvicted = errors.New("resp: evicted past MaxUnauthenticated")

// isEvicted reports whether c, not authenticated, was evicted past
// MaxUnauthenticated (see Server.listUnauthed).
func (c *conn) isEvicted() bool { return !c.authed && c.evicted.Load() }

// deadlineReader arms the read deadline when a command is part read and
// the rest must be waited for, and sets it back between commands: no
// deadline (or the authentication one) while a client is idle.
type deadlineReader struct{ c *conn }

func (d deadlineReader) Read(p []byte) (int, error) {
	c := d.c
	// Whatever waits for more input first sends the replies it has: a
	// pipeline's replies go out together, and none waits behind a read
	// that blocks (a command whose rest is still on its way).
	if len(c.out) > 0 {
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	if c.isEvicted() {
		return 0, errEvicted
	}
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		if c.pre = c.pre[n:]; len(c.pre) == 0 {
			c.pre = nil
			c.releaseAhead()
		}
		return n, nil
	}
	switch {
	case c.rd.mid && (!c.armed || c.armedFor != c.rd.begun):
		// A command's rest is awaited: it has CommandTimeout from now,
		// where the deadline is not set for it yet. A stream of
		// commands each cut across reads (a pipeline sent as it is
		// made) finds one begun at every read: each gets its own, not
		// what the first left.
		c.armedFor = c.rd.begun
		c.armedBy = time.Now().Add(c.s.cfg.CommandTimeout)
		if !c.authed && c.authBy.Before(c.armedBy) {
			// Beginning a command does not put off AuthTimeout.
			c.armedBy = c.authBy
		}
		c.nc.SetReadDeadline(c.armedBy)
		c.armed = true
	case !c.rd.mid && c.armed:
		c.nc.SetReadDeadline(c.authBy)
		c.armed = false
	}
	// Shutdown: between commands the connection ends. This looks after
	// the connection's last deadline was set, and Shutdown sets its own
	// after it begins: one of the two sees the other.
	if !c.rd.mid && c.s.drain.Err() != nil {
		return 0, io.EOF
	}
	// Evicted past MaxUnauthenticated: as for Shutdown, this looks after
	// the last deadline was set, and the eviction sets its own after it
	// marks the connection.
	if c.isEvicted() {
		return 0, errEvicted
	}
	n, err := c.nc.Read(p)
	if err != nil && c.isEvicted() {
		return n, errEvicted
	}
	// Shutdown's deadline woke a command being read: it reads on, within
	// its own.
	for err != nil && c.rd.mid && errors.Is(err, os.ErrDeadlineExceeded) && c.s.drain.Err() != nil && time.Now().Before(c.armedBy) {
		c.nc.SetReadDeadline(c.armedBy)
		n, err = c.nc.Read(p)
	}
	return n, err
}

func (c *conn) takeLarge(n int64) error {
	if c.large+n > c.s.cfg.LargeInFlight {
		// It would wait for ever.
		return protoErr("a command of arguments of more than %d bytes exceeds the budget of %d bytes of large values in flight", c.large+n, c.s.cfg.LargeInFlight)
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.CommandTimeout)
	defer cancel()
	if err := c.s.large.Acquire(ctx, n); err != nil {
		return protoErr("server busy: an argument of %d bytes waited %v for the budget of %d bytes of large values in flight", n, c.s.cfg.CommandTimeout, c.s.cfg.LargeInFlight)
	}
	c.large += n
	return nil
}

func (c *conn) releaseLarge() {
	c.rd.done()
	if c.large > 0 {
		c.s.large.Release(c.large)
		c.large = 0
	}
}

func (c *conn) serve() {
	defer c.settle() // a client gone with its replies unsent leaves cells to free
	defer c.nc.Close()
	defer c.releaseAhead()
	defer c.releaseLarge()
	for !c.quit {
		args, err := c.rd.next()
		if err != nil {
			if c.isEvicted() {
				c.writeError(c.s.evictedMsg())
				c.flush()
				return
			}
			var pe *errProtocol
			if errors.As(err, &pe) {
				c.writeError("ERR " + pe.Error())
				if c.flush() == nil {
					// The client may be sending the rest of what was
					// refused (a value over the limit): read and drop it
					// for a while, so that the error reaches it, not a
					// reset (see package linger).
					c.releaseLarge()
					linger.Drain(c.nc, linger.Time)
				}
			}
			return
		}
		if len(args) > 0 {
			c.dispatch(args)
		}
		c.releaseLarge()
		if len(c.out) >= 64<<10 {
			if c.flush() != nil {
				return
			}
		}
	}
	c.flush()
}

func (c *conn) flush() error {
	if len(c.out) == 0 {
		return c.werr
	}
	err := c.write(c.out)
	if cap(c.out) > 1<<20 {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	return err
}

// write writes b to the client within CommandTimeout. A failed write
// (its deadline passed, the peer went away) may have sent part of b: the
// stream is cut inside a reply, so the failure is final: the connection
// quits, and every later write fails at once with the same error, so no
// reply goes out after the hole.
//
// What the socket does not take at once is written while the client's
// next commands are read ahead (writeReadingAhead): a client that sends
// its whole pipeline before it reads a reply (redis-py's and go-redis's
// pipelines do) would otherwise wait for the server to read, while the
// server waits for it to read.
func (c *conn) write(b []byte) error {
	if c.werr != nil {
		return c.werr
	}
	if err := c.settle(); err != nil {
		c.werr, c.quit = err, true
		return err
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.CommandTimeout))
	n, err := c.writeNoWait(b)
	if err == nil && n < len(b) {
		if c.raw != nil {
			err = c.writeReadingAhead(b[n:])
		} else {
			_, err = c.nc.Write(b[n:])
		}
	}
	if err != nil {
		c.werr, c.quit = err, true
	}
	return err
}

// writeNoWait writes what of b the socket takes now; with no raw
// connection to write through, nothing.
func (c *conn) writeNoWait(b []byte) (int, error) {
	if !c.rawChecked {
		c.rawChecked = true
		if sc, ok := c.nc.(syscall.Conn); ok {
			c.raw, _ = sc.SyscallConn()
			c.writeFn = c.writeFD
		}
	}
	if c.raw == nil {
		return 0, nil
	}
	c.wb, c.wn, c.wErrno = b, 0, nil
	err := c.raw.Write(c.writeFn)
	n := c.wn
	if err == nil {
		err = c.wErrno
	}
	c.wb, c.wn, c.wErrno = nil, 0, nil
	return n, err
}

// writeFD writes c.wb[c.wn:] to fd until the socket takes no more now.
func (c *conn) writeFD(fd uintptr) bool {
	for c.wn < len(c.wb) {
		n, err := unix.Write(int(fd), c.wb[c.wn:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return true
		case err != nil:
			c.wErrno = err
			return true
		}
		c.wn += n
	}
	return true
}

// Bounds on reading ahead: a connection reads ahead at most its largest
// argument (MaxValue) while a write waits, or unauthedAhead before it
// has authenticated (a command then has at most 8 arguments of 4 KiB);
// its buffer's bytes past aheadFree are charged to the server's budget
// for large arguments.
const (
	aheadFree     = 1 << 20
	unauthedAhead = 64 << 10
)

// writeReadingAhead writes b, waiting for the client to take it, while
// it reads what the client sends meanwhile into c.pre, which the reader
// reads first. A client that sends more than the bound meanwhile, or
// past the budget, is not reading its replies: its write is ended at
// once (and so its connection), logged.
func (c *conn) writeReadingAhead(b []byte) error {
	limit := int(c.s.cfg.MaxValue)
	if !c.authed {
		limit = unauthedAhead
	}
	done := make(chan struct{})
	over := false
	go func() {
		defer close(done)
		for {
			if len(c.pre) == cap(c.pre) && !c.growAhead(limit) {
				over = true
				c.nc.SetWriteDeadline(time.Now())
				return
			}
			n, err := c.nc.Read(c.pre[len(c.pre):cap(c.pre)])
			c.pre = c.pre[:len(c.pre)+n]
			if err != nil {
				return // the reader meets it again (or its deadline was ours)
			}
		}
	}()
	_, err := c.nc.Write(b)
	c.nc.SetReadDeadline(time.Unix(1, 0)) // ends the read ahead
	<-done
	if c.armed {
		c.nc.SetReadDeadline(c.armedBy)
	} else {
		c.nc.SetReadDeadline(c.authBy)
	}
	if len(c.pre) == 0 {
		c.pre = nil
		c.releaseAhead()
	}
	if over && err != nil {
		c.s.cfg.Logger.Warn("resp: a client sent more than it may ahead of reading its replies; closing it", "remote", c.remote, "bytes", len(c.pre), "limit", limit)
	}
	return err
}

// watchGone watches for the client closing its connection while a
// command waits for something other than the client (TQ.CHANGES's wait
// for a change, up to minutes; a write's for room, see whileWaiting): it reads what the client sends meanwhile
// into c.pre, as writeReadingAhead does (up to MaxValue; past it, or past
// the budget, it stops watching), and calls gone once the read meets the
// end of the stream or fails, as Redis frees a client blocked in BLPOP
// that closes. The returned unwatch ends the watch; it must be called
// before the connection is read or written again.
func (c *conn) watchGone(gone func()) (unwatch func()) {
	if c.nc == nil {
		return func() {}
	}
	// The command is read whole: its read deadline (armed while it
	// arrived) no longer applies, and the wait is bounded otherwise.
	c.nc.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if len(c.pre) == cap(c.pre) && !c.growAhead(int(c.s.cfg.MaxValue)) {
				return // a client that does not wait for its reply: watched no more
			}
			n, err := c.nc.Read(c.pre[len(c.pre):cap(c.pre)])
			c.pre = c.pre[:len(c.pre)+n]
			if err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					gone() // the end of the stream, a reset, or the server closed it
				}
				return
			}
		}
	}()
	return func() {
		c.nc.SetReadDeadline(time.Unix(1, 0)) // ends the read
		<-done
		if c.armed {
			c.nc.SetReadDeadline(c.armedBy)
		} else {
			c.nc.SetReadDeadline(c.authBy)
		}
		if len(c.pre) == 0 {
			c.pre = nil
			c.releaseAhead()
		}
	}
}

// growAhead makes room in c.pre for more of what is read ahead, up to
// limit bytes in all, charging its buffer past aheadFree; false when
// there is no room.
func (c *conn) growAhead(limit int) bool {
	if len(c.pre) >= limit {
		return false
	}
	size := min(max(2*cap(c.pre), 64<<10), limit)
	charge := max(int64(size-aheadFree), 0)
	if charge > c.aheadCharged {
		if !c.s.large.TryAcquire(charge - c.aheadCharged) {
			return false
		}
		c.aheadCharged = charge
	}
	pre := make([]byte, len(c.pre), size)
	copy(pre, c.pre)
	c.pre = pre
	return true
}

// releaseAhead gives back the budget c.pre's buffer held, once read.
func (c *conn) releaseAhead() {
	if c.aheadCharged > 0 {
		c.s.large.Release(c.aheadCharged)
		c.aheadCharged = 0
	}
}

// writeBulk writes one value. A large one goes to the socket from where
// it lies (a view into storage), after what is buffered, with no copy.
func (c *conn) writeBulk(v []byte) {
	if len(v) < 64<<10 {
		if len(c.out) >= 64<<10 && c.lp == nil {
			// A reply of many values (an MGET naming a key many times,
			// an EXEC of many GETs) goes out as it collects, as a
			// pipeline's replies do: it is not built whole in memory.
			c.flush()
		}
		c.out = redcon.AppendBulk(c.out, v)
		return
	}
	if c.lp != nil {
		c.leave = true // large replies go from the connection's goroutine
		return
	}
	c.out = append(c.out, '$')
	c.out = strconv.AppendInt(c.out, int64(len(v)), 10)
	c.out = append(c.out, '\r', '\n')
	if c.flush() == nil && c.write(v) == nil {
		c.out = append(c.out, '\r', '\n')
	}
}

func (c *conn) writeError(msg string) {
	// A RESP error is one line.
	msg = string(bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, []byte(msg)))
	c.out = redcon.AppendError(c.out, msg)
}

func (c *conn) writeOK()                 { c.out = append(c.out, "+OK\r\n"...) }
func (c *conn) writeInt(n int64)         { c.out = redcon.AppendInt(c.out, n) }
func (c *conn) writeNull()               { c.out = redcon.AppendNull(c.out) }
func (c *conn) writeArray(n int)         { c.out = redcon.AppendArray(c.out, n) }
func (c *conn) writeString(s string)     { c.out = redcon.AppendString(c.out, s) }
func (c *conn) writeBulkString(s string) { c.out = redcon.AppendBulkString(c.out, s) }
func (c *conn) writeStrings(ss []string) {
	c.writeArray(len(ss))
	for _, s := range ss {
		c.writeBulkString(s)
	}
}

// writeErr answers with err as a Redis error: its code first (WRONGTYPE
// for a dtype mismatch, OOM for a full unit, LOADING for what may
// succeed if tried again (see notNow), ERR otherwise), then TQ's
// message, which names what was wrong.
func (c *conn) writeErr(err error) {
	if err == errWouldWait {
		c.leave = true // run again on the connection's own goroutine
		return
	}
	code := "ERR"
	switch {
	case errors.Is(err, engine.ErrDTypeMismatch):
		code = "WRONGTYPE"
	case errors.Is(err, engine.ErrCapacity):
		code = "OOM"
	case notNow(err, c.once):
		code = "LOADING"
	}
	c.writeError(code + " " + err.Error())
}

// authenticate checks a token given by AUTH or HELLO.
func (c *conn) authenticate(user, pass []byte) bool {
	if user != nil && string(user) != "default" {
		return false
	}
	tok := c.s.cfg.Token
	if tok == "" || auth.Equal(tok, string(pass)) {
		if !c.authed {
			if !c.s.authenticated(c) {
				// Evicted past MaxUnauthenticated first: it ends.
				c.writeError(c.s.evictedMsg())
				c.quit = true
				return false
			}
			c.authed, c.rd.authed = true, true
			c.authBy = time.Time{}
			switch {
			case c.lp != nil:
				c.lp.unauthed.Add(-1)
			case !c.armed:
				c.nc.SetReadDeadline(time.Time{})
			default:
				// The command deadline armed was held to authBy: a
				// command pipelined after the AUTH gets its own.
				c.armedBy = time.Now().Add(c.s.cfg.CommandTimeout)
				c.nc.SetReadDeadline(c.armedBy)
			}
		}
		return true
	}
	return false
}

// notNow tells an error that may pass if the command is sent again
// later, to this process or to the one that replaces it: a unit or
// client shutting down (engine.ErrClosed: a write refused so changed
// nothing), and, for a command whose answer is the same however often it
// ran (not once), a peer, the controller or another process's unit, that
// cannot be reached now (engine.ErrUnavailable: as after a connection
// error, a write may or may not have been made). Redis answers its own
// such condition, a dataset still loading, with LOADING, which go-redis
// retries and redis-py raises as BusyLoadingError, a ConnectionError its
// Retry retries; an ERR neither retries. A once command sent again after
// it may have run would answer otherwise (a TQ.TAGCAS that was made a
// mismatch, an HSET's count 0), and the client would take that for the
// outcome: it answers ERR, and its caller decides.
func notNow(err error, once bool) bool {
	return errors.Is(err, engine.ErrClosed) || !once && errors.Is(err, engine.ErrUnavailable)
}

var errWrongPass = "WRONGPASS invalid username-password pair or user is disabled."

// maxAuthFailures is how many AUTHs (HELLO … AUTH counting as one) a
// connection may fail: the last is answered that the connection closes,
// and it does. A client that mistyped may try again; one that tries
// tokens must connect again for every few, which MaxUnauthenticated and
// MaxClients bound.
const maxAuthFailures = 3

// wrongPass answers an AUTH that failed, and past maxAuthFailures
// closes the connection: with WRONGPASS still first, so that clients
// take it for a wrong token as before (redis-py raises
// AuthenticationError and drops the connection after any).
func (c *conn) wrongPass() {
	c.authFails++
	if c.authFails < maxAuthFailures {
		c.writeError(errWrongPass)
		return
	}
	c.writeError(fmt.Sprintf("WRONGPASS invalid username-password pair or user is disabled; too many failed AUTH attempts (%d); closing", maxAuthFailures))
	c.quit = true
}
