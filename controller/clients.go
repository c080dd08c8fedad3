package controller

// Clients that name themselves. A client's HELLO carries an id it keeps
// for as long as it lives (wirepb.Hello.client_id), on every connection,
// redials included. The server counts each id's open connections
// (Server's OnConnect and OnDisconnect). Once the last one was closed by
// the client itself, the client is taken for gone after
// Config.HeldClientGrace unless it connects again: a client that redials
// after a network blip keeps what it holds, while a killed one, whose
// kernel closes its sockets, has its holds given back as soon as a fetch
// waits at the end for them (holds.go), on any host. A connection the
// controller closed (idle past the timeout, a broken frame, a shutdown)
// says nothing of the client: its holds wait for the held-fetch TTL, as
// do those of a client that never named itself or that the controller
// knew before a restart (ids are not logged).

import (
	"sync"
	"time"
)

// DefaultHeldClientGrace is the default Config.HeldClientGrace.
const DefaultHeldClientGrace = 15 * time.Second

// maxLeftClients bounds the clients with no connection that the table
// remembers; past it the oldest are forgotten (their holds wait for the
// TTL).
const maxLeftClients = 1 << 16

// clientTable follows the clients that named themselves.
type clientTable struct {
	mu sync.Mutex
	m  map[string]*clientLife
	// left are the clients whose connections all ended, by when, oldest
	// first; an element whose client connected since (or left again)
	// is stale: its n differs from the client's.
	left []leftClient
}

type clientLife struct {
	conns int
	// byClient: its last connection ended, closed by the client, at
	// left. False while it has a connection, or when the controller
	// closed the last one.
	byClient bool
	left     time.Time
	n        uint64 // counts the times its connections all ended
}

type leftClient struct {
	id string
	n  uint64
	at time.Time
}

// connected counts a connection of client id.
func (t *clientTable) connected(id string) {
	if id == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]*clientLife)
	}
	l := t.m[id]
	if l == nil {
		l = &clientLife{}
		t.m[id] = l
	}
	l.conns++
	l.byClient = false
}

// disconnected counts the end of a connection of client id, closed by
// the client (byClient) or not, and forgets the clients that left
// longer than keep ago (negative: only past maxLeftClients).
func (t *clientTable) disconnected(id string, byClient bool, now time.Time, keep time.Duration) {
	if id == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.m[id]
	if l == nil || l.conns == 0 {
		return // not counted in (a table that was never told)
	}
	if l.conns--; l.conns == 0 {
		l.byClient, l.left = byClient, now
		l.n++
		t.left = append(t.left, leftClient{id: id, n: l.n, at: now})
	}
	for len(t.left) > 0 && (len(t.left) > maxLeftClients || keep >= 0 && now.Sub(t.left[0].at) > keep) {
		f := t.left[0]
		if l := t.m[f.id]; l != nil && l.n == f.n && l.conns == 0 {
			delete(t.m, f.id)
		}
		t.left[0] = leftClient{}
		t.left = t.left[1:]
	}
}

// gone reports whether client id closed its every connection at least
// grace ago and has not connected since, and for how long it has been
// gone.
func (t *clientTable) gone(id string, now time.Time, grace time.Duration) (bool, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.m[id]
	if l == nil || l.conns > 0 || !l.byClient {
		return false, 0
	}
	d := now.Sub(l.left)
	return d >= grace, d
}
