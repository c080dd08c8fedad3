//go:build linux && cgo && rdma

package rdma

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A work request whose completion says the request itself is wrong (the
// unit refused it as invalid, or its memory refused the address, or this
// side's device refused the local buffer) fails the call at once with an
// error that is not engine.ErrUnavailable and names the status and the
// request: sending it again would fail the same way, so the call does not
// go again on new queue pairs and the caller is not told the unit is
// unreachable. A failure of the transport (retry exceeded) stays
// engine.ErrUnavailable. Either way new queue pairs come up once (for a
// write before it gives its reservation back, else for the next call), and
// the next call succeeds.
func TestWrongRequestFailsClearly(t *testing.T) {
	cases := []struct {
		status WCStatus
		is     error
		not    error
	}{
		{WCRemInvReqErr, engine.ErrInvalid, engine.ErrUnavailable},
		{WCRemAccessErr, engine.ErrCorrupt, engine.ErrUnavailable},
		{WCLocLenErr, engine.ErrInvalid, engine.ErrUnavailable},
		{WCLocProtErr, engine.ErrInvalid, engine.ErrUnavailable},
		{WCRetryExcErr, engine.ErrUnavailable, engine.ErrInvalid},
	}
	_, _, addr := inProcUnit(t)
	tr := newTransport(t, Config{Device: "emu0"})
	c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: 7, Addr: addr})
	require.NoError(t, err)
	dev, err := tr.Device()
	require.NoError(t, err)
	for _, tc := range cases {
		for _, op := range []string{"read", "write"} {
			t.Run(fmt.Sprintf("%s/%s", tc.status, op), func(t *testing.T) {
				payload := bytes.Repeat([]byte(op), 1024) // one work request
				addrs, err := c.Write(t.Context(), [][][]byte{{payload}})
				require.NoError(t, err)
				a := addrs[0]
				before := c.Reconnects()

				require.NoError(t, dev.InjectFault(2, 0, 1, int(tc.status)))
				if op == "read" {
					err = c.Read(t.Context(), addrs, [][]byte{make([]byte, len(payload))})
				} else {
					_, err = c.Write(t.Context(), [][][]byte{{payload}})
				}
				require.Error(t, err)
				assert.ErrorIs(t, err, tc.is)
				assert.NotErrorIs(t, err, tc.not)
				assert.Contains(t, err.Error(), tc.status.String())
				if op == "read" {
					assert.Contains(t, err.Error(), fmt.Sprintf("rdma read of unit 7, segment %d, bytes %d+%d", a.Segment, a.Offset, a.Len))
				} else {
					assert.Contains(t, err.Error(), fmt.Sprintf("rdma write of unit 7, segment %d, bytes ", a.Segment))
				}
				// A write brings the new queue pairs up itself before it
				// aborts its reservation (see abortWrite), after it failed.
				brought := int64(0)
				if op == "write" {
					brought = 1
				}
				assert.Equal(t, before+brought, c.Reconnects(), "the call did not go again on new queue pairs")

				got := make([]byte, len(payload))
				require.NoError(t, c.Read(t.Context(), addrs, [][]byte{got}))
				assert.Equal(t, payload, got)
				assert.Equal(t, before+1, c.Reconnects(), "new queue pairs came up once")
			})
		}
	}
}
