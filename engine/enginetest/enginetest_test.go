package enginetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }

// memConn is a reference DataConn over an in-memory map: what the suite
// checks, done the simplest way. Extents never share a segment number.
type memConn struct {
	mu     sync.Mutex
	next   uint32
	exts   map[uint32]*memExtent
	closed bool
	dead   bool
}

type memExtent struct {
	gen   uint32
	data  []byte
	freed [][2]uint64 // freed [lo, hi) cells
}

var errDead = errors.New("memconn: unit died")

func newMemConn() *memConn { return &memConn{exts: map[uint32]*memExtent{}} }

func (m *memConn) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case m.closed:
		return engine.ErrClosed
	case m.dead:
		return errDead
	}
	return nil
}

func (m *memConn) Write(ctx context.Context, extents [][][]byte) ([]engine.RemoteAddr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return nil, err
	}
	out := make([]engine.RemoteAddr, len(extents))
	for i, pieces := range extents {
		var data []byte
		for _, p := range pieces {
			data = append(data, p...)
		}
		if len(data) == 0 {
			continue
		}
		m.next++
		m.exts[m.next] = &memExtent{gen: m.next * 3, data: data}
		out[i] = engine.RemoteAddr{Segment: m.next, Gen: m.next * 3, Len: uint64(len(data))}
	}
	return out, nil
}

// find returns the extent holding live range a.
func (m *memConn) find(a engine.RemoteAddr) (*memExtent, error) {
	e := m.exts[a.Segment]
	if e == nil || e.gen != a.Gen || a.Offset > uint64(len(e.data)) || a.Len > uint64(len(e.data))-a.Offset {
		return nil, fmt.Errorf("range %+v: %w", a, engine.ErrNotFound)
	}
	for _, f := range e.freed {
		if a.Offset < f[1] && f[0] < a.Offset+a.Len {
			return nil, fmt.Errorf("range %+v covers freed bytes: %w", a, engine.ErrNotFound)
		}
	}
	return e, nil
}

func (m *memConn) Read(ctx context.Context, ranges []engine.RemoteAddr, dst [][]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	if len(dst) != len(ranges) {
		return engine.ErrInvalid
	}
	for i, r := range ranges {
		if uint64(len(dst[i])) != r.Len {
			return engine.ErrInvalid
		}
		if r.Len == 0 {
			continue
		}
		e, err := m.find(r)
		if err != nil {
			return err
		}
		copy(dst[i], e.data[r.Offset:])
	}
	return nil
}

func (m *memConn) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx); err != nil {
		return err
	}
	for _, c := range cells {
		if c.Len == 0 {
			continue
		}
		if _, err := m.find(c); err != nil {
			return err
		}
	}
	for _, c := range cells {
		if c.Len > 0 {
			e := m.exts[c.Segment]
			e.freed = append(e.freed, [2]uint64{c.Offset, c.Offset + c.Len})
		}
	}
	return nil
}

func (m *memConn) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

var _ engine.DataConn = (*memConn)(nil)

// TestReference runs the suite against memConn.
func TestReference(t *testing.T) {
	Run(t, func(t *testing.T) (engine.DataConn, func()) {
		m := newMemConn()
		t.Cleanup(func() { m.Close() })
		return m, func() {
			m.mu.Lock()
			m.dead = true
			m.mu.Unlock()
		}
	})
}
