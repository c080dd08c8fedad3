//go:build linux && cgo && rdma

package rdma

import (
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// silentTarget describes no segment, in RDMA_CONNECT and RDMA_SEGMENTS
// alike (a unit that is buggy or hostile).
type silentTarget struct{ *Target }

func (s *silentTarget) Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error) {
	r, c, err := s.Target.Connect(req)
	if err == nil {
		r.Segments = nil
	}
	return r, c, err
}

func (s *silentTarget) Segments([]uint32) ([]*wirepb.RdmaSegment, error) { return nil, nil }

// A unit whose RDMA_SEGMENTS reply leaves out a segment the client asked
// for gets an error that says so. The client took the reply as it came
// and then refused the range as "outside segment 1 of 0 bytes", a size
// the unit never gave.
func TestUnitThatDoesNotDescribeASegment(t *testing.T) {
	_, addr := inProcUnitWith(t, "emu1", func(tg *Target) storage.RDMATarget { return &silentTarget{tg} })
	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Write(t.Context(), [][][]byte{{[]byte("hello")}})
	require.ErrorIs(t, err, wire.ErrFrame)
	assert.ErrorContains(t, err, "unit did not describe segment 1")
	assert.NotContains(t, err.Error(), "of 0 bytes")
}

// staleConnectTarget answers RDMA_CONNECT with a list of segments older
// than the ones its RDMA_SEGMENTS describes (here: none, as silentTarget's),
// as a reply built before the unit mapped a segment another call learned
// meanwhile.
type staleConnectTarget struct{ *Target }

func (s *staleConnectTarget) Connect(req *wirepb.RdmaConnectRequest) (*wirepb.RdmaConnectReply, io.Closer, error) {
	return (&silentTarget{s.Target}).Connect(req)
}

// New queue pairs keep the segments the client learned: the reply to
// RDMA_CONNECT, which may be older than a segment another call learned
// with RDMA_SEGMENTS while the handshake ran, replaced the whole list,
// and that call's transfer then failed with a false "segment N, which the
// unit has not described".
func TestReconnectKeepsLearnedSegments(t *testing.T) {
	_, addr := inProcUnitWith(t, "emu1", func(tg *Target) storage.RDMATarget { return &staleConnectTarget{tg} })
	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	data := []byte("hello")
	addrs, err := c.Write(t.Context(), [][][]byte{{data}}) // learns segment 1
	require.NoError(t, err)

	// Between the read's learning of its segments and their lookup,
	// another call's failure tears the queue pairs down and a third call
	// brings new ones up.
	var once sync.Once
	testHookLearned = func(c *Conn) {
		once.Do(func() {
			c.mu.RLock()
			gen := c.set.gen
			c.mu.RUnlock()
			c.breakQPs(gen, errors.New("another call's error completion"))
			_, err := c.qps(t.Context())
			require.NoError(t, err)
		})
	}
	t.Cleanup(func() { testHookLearned = nil })
	dst := make([]byte, len(data))
	require.NoError(t, c.Read(t.Context(), addrs, [][]byte{dst}))
	assert.Equal(t, data, dst)
	assert.Equal(t, int64(2), c.Reconnects(), "the read went on new queue pairs")
}
