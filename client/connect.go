package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tqgo/tq/internal/hostid"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/transport/rdma"
	"github.com/tqgo/tq/transport/shm"
	"github.com/tqgo/tq/transport/tcp"
	"github.com/tqgo/tq/wire"
)

// ConnectConfig configures [Connect].
type ConnectConfig struct {
	Client Config
	// Token is the cluster's shared secret. Empty means the one this
	// user's servers use: $TQ_TOKEN, else the token file tq serve keeps in
	// the data directory (see [FindToken]); a cluster run with --insecure
	// needs none.
	Token string
	// Name identifies this client in the servers' logs and stat output.
	Name string
	// RequireServerProof makes the client refuse a controller or unit
	// that answers the handshake without proving it knows the token (as
	// a server run with --insecure does, and as any peer can), on every
	// connection: the controller's and the tcp, shm and rdma data
	// connections (see [wire.ConnConfig.RequireServerProof]). It needs a
	// token. $TQ_REQUIRE_SERVER_PROOF=1 turns it on too (see
	// [RequireServerProof]). Off by default: a token found by itself
	// would otherwise refuse every --insecure cluster.
	RequireServerProof bool
	// Lanes bounds the controller connections over which the small KV
	// puts and gets of goroutines sharing the client spread (see
	// [RemoteConfig.Lanes]; 0: 4, opened only as calls overlap).
	Lanes int
	// WaitForUnits makes Connect wait (until ctx ends) for at least one
	// live storage unit, for clients started together with the cluster.
	WaitForUnits bool
	// Transport forces the data-plane transport: "" picks per unit (shm
	// for a unit on this host that serves shared memory, else rdma when
	// the unit serves it and this host has a usable device — see RDMA —,
	// else tcp), "shm", "rdma" or "tcp". Forcing shm or rdma where it
	// cannot work is an error wrapping [engine.ErrNotSupported], never a
	// silent downgrade; "tcp" still uses a unit's unix socket when it has
	// one on this host.
	Transport string
	// Transport settings for the data plane. RDMA.Device names this
	// host's device ("" : the hardware device nearest this process, if
	// any; an emulated device such as "emu0" is used only when named).
	TCP  tcp.Config
	Shm  shm.Config
	RDMA rdma.Config
}

// Transport names for [ConnectConfig.Transport].
const (
	TransportAuto = ""
	TransportShm  = "shm"
	TransportRDMA = "rdma"
	TransportTCP  = "tcp"
)

// Connect attaches to a running cluster through its controller's address
// ("tcp://host:port" or "unix:///path") and returns a client with the same
// API as an embedded one. Storage units are reached at the addresses they
// registered: shared memory when the unit is on this host and serves it
// (see [ConnectConfig.Transport]), else a unix socket when the unit is on
// this host and its socket is reachable, TCP otherwise. Close the client
// when done.
//
// A unit that cannot be dialed (it died and the controller does not know
// yet, or its host is unreachable) does not fail Connect: it stays in the
// client's table, writes go to the other units, reads of its cells fail
// at once with an error wrapping [engine.ErrUnavailable] (and
// [engine.ErrLost]) that names it, and it is dialed again, with a backoff,
// so that it serves again once it is back. Connect fails only when no
// unit is reachable: [engine.ErrUnavailable], or [engine.ErrNotFound]
// when none is registered.
//
// The client keeps learning from the controller which units there are:
// a unit that joins later (a restarted unit comes back under a new id) is
// dialed when a read first meets its cells, or within about a second for
// writes; a unit the controller reports dead takes no more writes.
func Connect(ctx context.Context, addr string, cfg ConnectConfig) (*Client, error) {
	switch cfg.Transport {
	case TransportAuto, TransportShm, TransportRDMA, TransportTCP:
	default:
		return nil, fmt.Errorf("transport %q (want \"\", \"shm\", \"rdma\" or \"tcp\"): %w", cfg.Transport, engine.ErrInvalid)
	}
	if err := cfg.RDMA.Validate(); err != nil {
		return nil, err
	}
	if err := hostid.Check(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, engine.ErrInvalid)
	}
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("client-%d", os.Getpid())
	}
	token, err := FindToken(cfg.Token)
	if err != nil {
		return nil, &engine.OpError{Op: "connect", Peer: addr, Err: err}
	}
	cfg.Token = token
	if cfg.RequireServerProof, err = RequireServerProof(cfg.RequireServerProof); err != nil {
		return nil, &engine.OpError{Op: "connect", Peer: addr, Err: err}
	}
	meta, err := DialMeta(ctx, addr, RemoteConfig{Token: cfg.Token, Name: cfg.Name, Lanes: cfg.Lanes, Host: cfg.Client.Host,
		Conn: wire.ConnConfig{RequireServerProof: cfg.RequireServerProof}})
	if err != nil {
		return nil, err
	}
	cluster := meta.cluster() // before the list (see discovery.learn)
	units, down, err := liveUnits(ctx, meta, cfg.WaitForUnits)
	if err != nil {
		meta.Close()
		return nil, err
	}
	tcfg := cfg.TCP
	if tcfg.Token == "" {
		tcfg.Token = cfg.Token
	}
	tcfg.Conn.RequireServerProof = tcfg.Conn.RequireServerProof || cfg.RequireServerProof
	tr := tcp.New(tcfg)
	scfg := cfg.Shm
	if scfg.Token == "" {
		scfg.Token = cfg.Token
	}
	if scfg.Name == "" {
		scfg.Name = cfg.Name
	}
	scfg.Conn.RequireServerProof = scfg.Conn.RequireServerProof || cfg.RequireServerProof
	str := shm.New(scfg)
	rcfg := cfg.RDMA
	if rcfg.Token == "" {
		rcfg.Token = cfg.Token
	}
	if rcfg.Name == "" {
		rcfg.Name = cfg.Name
	}
	rcfg.Conn.RequireServerProof = rcfg.Conn.RequireServerProof || cfg.RequireServerProof
	rtr := rdma.New(rcfg)
	host := cfg.Client.Host
	if host == "" {
		host = HostID()
	}
	d := unitDialer{transport: cfg.Transport, host: host, tcp: tr, shm: str, rdma: rtr}
	dus, errs := d.dialAll(ctx, units)
	var table []DataUnit
	var unreachable []error
	up := 0
	for i, u := range units {
		err := errs[i]
		if err != nil && !errors.Is(err, errNoAddr) && (cfg.Transport == TransportShm && !d.shmPossible(u) ||
			cfg.Transport == TransportRDMA && errors.Is(err, engine.ErrNotSupported)) {
			// Forcing a transport where it cannot work is the caller's error.
			closeUnits(table)
			tr.Close()
			str.Close()
			rtr.Close()
			meta.Close()
			return nil, fmt.Errorf("connect to storage unit %d over %s: %w", u.ID, cfg.Transport, err)
		}
		du := d.orRedial(u, dus[i], err)
		if du == nil {
			continue
		}
		if err == nil {
			up++
		} else {
			unreachable = append(unreachable, fmt.Errorf("storage unit %d: %w", u.ID, err))
		}
		table = append(table, du)
	}
	// Units the controller reports dead are in the table too, not dialed
	// until a read meets their cells: one may only have missed heartbeats
	// (a restarted controller waits for its units to come back), and
	// while it serves its cells are not lost.
	dead := map[engine.UnitID]bool{}
	for _, u := range down {
		table = append(table, d.deferred(u))
		dead[u.ID] = true
	}
	closeAll := func() {
		closeUnits(table)
		tr.Close()
		str.Close()
		rtr.Close()
		meta.Close()
	}
	if up == 0 {
		closeAll()
		if len(unreachable) == 0 {
			return nil, fmt.Errorf("no reachable storage unit registered with %s: %w", addr, engine.ErrNotFound)
		}
		return nil, fmt.Errorf("no storage unit registered with %s is reachable: %w: %w", addr, engine.ErrUnavailable, errors.Join(unreachable...))
	}
	c, err := newClient(meta, table, cfg.Client, dead)
	if err != nil {
		closeAll()
		return nil, err
	}
	c.room.learn(units)
	t := c.tbl.Load() // no one else has c yet
	t.draining = drainingOf(append(units, down...))
	t.caps = capsOf(append(units, down...))
	t.cluster, t.inc = cluster, map[engine.UnitID]uint64{}
	for _, u := range append(units, down...) {
		t.inc[u.ID] = u.Incarnation
	}
	c.disc = &discovery{list: meta.Units, cluster: meta.cluster, dial: d}
	c.closers = append(c.closers, func() error { return c.disc.close(c) }, // before the transports the dials use
		tr.Close, str.Close, rtr.Close, meta.Close)
	return c, nil
}

// errNoAddr reports a unit that registered no address this client could
// dial.
var errNoAddr = errors.New("client: unit has no address to dial")

// unitDialer connects to storage units as [Connect] was configured to.
type unitDialer struct {
	transport string
	host      string // this client's host id
	tcp       *tcp.Transport
	shm       *shm.Transport
	rdma      *rdma.Transport
}

// dial connects to a unit: over shared memory when it can (and always
// with TransportShm; never with TransportRDMA, which requires RDMA on
// the unit's host too), else over RDMA or its unix socket or TCP address.
func (d unitDialer) dial(ctx context.Context, u engine.UnitInfo) (DataUnit, error) {
	if d.transport == TransportAuto || d.transport == TransportShm {
		sc, err := dialShm(ctx, d.shm, u, d.host)
		if err == nil {
			return ShmUnit(u.ID, u.Host, sc), nil
		}
		if d.transport == TransportShm {
			return nil, err
		}
	}
	if d.transport == TransportRDMA || d.transport == TransportAuto && d.rdmaUsable(u) {
		rc, err := dialRDMA(ctx, d.rdma, u)
		if err == nil {
			return RemoteUnit(u.ID, u.Host, "rdma", rc), nil
		}
		if d.transport == TransportRDMA {
			return nil, err
		}
	}
	peer, kind, ok := PickAddr(u, d.host)
	if !ok {
		return nil, errNoAddr
	}
	dc, err := d.tcp.Dial(ctx, peer)
	if err != nil {
		return nil, err
	}
	return RemoteUnit(u.ID, u.Host, kind, dc), nil
}

// shmPossible reports whether shared memory could ever reach u: it runs
// on this host and registered an fd socket (which may be gone for now,
// with the unit).
func (d unitDialer) shmPossible(u engine.UnitInfo) bool {
	return u.Host == d.host && slices.ContainsFunc(u.Addrs, func(a string) bool { return strings.HasPrefix(a, "shm://") })
}

// rdmaUsable reports whether auto selection should try RDMA for u: it
// serves RDMA and this host has a device the transport can open.
func (d unitDialer) rdmaUsable(u engine.UnitInfo) bool {
	if !slices.ContainsFunc(u.Addrs, func(a string) bool { return strings.HasPrefix(a, "rdma://") }) {
		return false
	}
	_, err := d.rdma.Device()
	return err == nil
}

// RDMAPeer returns how to reach a unit over RDMA: its TCP address (the
// control connection), when it advertises an RDMA device ("rdma://NAME").
// Otherwise it returns an error wrapping [engine.ErrNotSupported].
func RDMAPeer(u engine.UnitInfo) (engine.PeerInfo, error) {
	peer := engine.PeerInfo{Unit: u.ID, Incarnation: u.Incarnation, Host: u.Host, Transport: "rdma"}
	if !slices.ContainsFunc(u.Addrs, func(a string) bool { return strings.HasPrefix(a, "rdma://") }) {
		return peer, fmt.Errorf("unit %d serves no RDMA: %w", u.ID, engine.ErrNotSupported)
	}
	for _, a := range u.Addrs {
		if strings.HasPrefix(a, "tcp://") {
			peer.Addr = a
			return peer, nil
		}
	}
	return peer, fmt.Errorf("unit %d has no TCP address for RDMA's control connection: %w", u.ID, engine.ErrNotSupported)
}

func dialRDMA(ctx context.Context, tr *rdma.Transport, u engine.UnitInfo) (*rdma.Conn, error) {
	peer, err := RDMAPeer(u)
	if err != nil {
		return nil, err
	}
	return tr.DialConn(ctx, peer)
}

// closeUnits stops the redials among units.
func closeUnits(units []DataUnit) {
	for _, u := range units {
		if r, ok := u.(*redialUnit); ok {
			r.Close()
		}
	}
}

// leaveUnits stops the redials among units that the client's discovery
// dropped from its table (see [redialUnit.leave]).
func leaveUnits(units []DataUnit) {
	for _, u := range units {
		if r, ok := u.(*redialUnit); ok {
			r.leave()
		}
	}
}

// FindToken returns the token a client presents: explicit when it is not
// empty, else $TQ_TOKEN, else (when $TQ_TOKEN is unset) the token file in
// this user's data directory ($TQ_DATA_DIR, else $XDG_STATE_HOME/tq, else
// ~/.local/state/tq) that tq serve creates on first start; "" when there
// is none. A token file others may read, or that another user owns, one
// that cannot be read (EACCES: it may be there, so it is not taken for
// none), and $TQ_TOKEN set but empty
// (as tq serve refuses it) are errors wrapping [engine.ErrInvalid] that
// name the path or the variable, rather than a token to send.
func FindToken(explicit string) (string, error) { return auth.FindToken(explicit) }

// RequireServerProof returns whether a client requires the servers to
// prove they know the token ([wire.ConnConfig.RequireServerProof]):
// explicit, else $TQ_REQUIRE_SERVER_PROOF ("1": yes; "0" or unset: no;
// another value is an error wrapping [engine.ErrInvalid]). [Connect] and
// [DialMeta] read it where they find the token.
func RequireServerProof(explicit bool) (bool, error) { return auth.RequireServerProof(explicit) }

// ShmPeer returns how to reach a unit through shared memory: its unix
// socket, when it runs on this host (its host id is host) and advertises
// a reachable fd socket ("shm:///path"), both in a directory of this
// user's that nobody else may write to (auth.CheckPeerSocket). Otherwise it returns an error
// wrapping [engine.ErrNotSupported] that says why.
func ShmPeer(u engine.UnitInfo, host string) (engine.PeerInfo, error) {
	peer := engine.PeerInfo{Unit: u.ID, Incarnation: u.Incarnation, Host: u.Host, Transport: "shm"}
	if u.Host != host {
		return peer, fmt.Errorf("unit runs on host %q, this is %q: %w", u.Host, host, engine.ErrNotSupported)
	}
	var fdSock string
	for _, a := range u.Addrs {
		if path, ok := strings.CutPrefix(a, "shm://"); ok {
			if auth.CheckPeerSocket(path) == nil {
				fdSock = path
			}
		}
	}
	if fdSock == "" {
		return peer, fmt.Errorf("unit advertises no reachable shm address: %w", engine.ErrNotSupported)
	}
	for _, a := range u.Addrs {
		if path, ok := strings.CutPrefix(a, "unix://"); ok {
			if auth.CheckPeerSocket(path) == nil {
				peer.Addr = a
				return peer, nil
			}
		}
	}
	return peer, fmt.Errorf("unit has no reachable unix socket: %w", engine.ErrNotSupported)
}

func dialShm(ctx context.Context, tr *shm.Transport, u engine.UnitInfo, host string) (*shm.Conn, error) {
	peer, err := ShmPeer(u, host)
	if err != nil {
		return nil, err
	}
	return tr.DialConn(ctx, peer)
}

// liveUnits returns the units the controller reports alive, waiting for
// one with wait, and those it reports dead.
func liveUnits(ctx context.Context, meta *RemoteMeta, wait bool) (live, dead []engine.UnitInfo, err error) {
	for {
		all, err := meta.Units(ctx)
		if err != nil {
			return nil, nil, err
		}
		live, dead = nil, nil
		for _, u := range all {
			if u.Alive {
				live = append(live, u)
			} else {
				dead = append(dead, u)
			}
		}
		if len(live) > 0 || !wait {
			return live, dead, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("wait for a live storage unit: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PickAddr chooses how to reach a unit: its unix socket when it runs on
// this host and the socket exists in a directory of this user's that
// nobody else may write to (auth.CheckPeerSocket), else its first TCP
// address.
func PickAddr(u engine.UnitInfo, host string) (engine.PeerInfo, string, bool) {
	peer := engine.PeerInfo{Unit: u.ID, Incarnation: u.Incarnation, Host: u.Host}
	if u.Host == host {
		for _, a := range u.Addrs {
			if path, ok := strings.CutPrefix(a, "unix://"); ok {
				if auth.CheckPeerSocket(path) == nil {
					peer.Addr, peer.Transport = a, "unix"
					return peer, "unix", true
				}
			}
		}
	}
	for _, a := range u.Addrs {
		if strings.HasPrefix(a, "tcp://") {
			peer.Addr, peer.Transport = a, "tcp"
			return peer, "tcp", true
		}
	}
	return peer, "", false
}

// Close releases what the client holds: for a connected client its
// connections to the controller and the storage units. Closing an
// embedded cluster's client does nothing (close the
// [github.com/tqgo/tq/embedded.Cluster]). It is idempotent and safe to
// call from several goroutines at once: each returns once the client is
// closed, and only the first reports what closing it failed on.
func (c *Client) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if len(c.closers) > 0 {
		c.closed.Store(true) // before the connections go: see readErr
	}
	var errs []error
	for _, f := range c.closers {
		errs = append(errs, f())
	}
	c.closers = nil
	return errors.Join(errs...)
}
