//go:build linux && cgo && rdma

package rdma

import (
	"io"
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
