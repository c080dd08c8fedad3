package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Requests of each kind read back as written, token included.
func TestFdRequestRoundTrip(t *testing.T) {
	for _, r := range []FdRequest{
		{Segment: 7, Token: "secret"},
		{Segment: 7, Incarnation: 42, Token: "secret"},
		{Ring: true, RingSize: 1 << 20, Token: strings.Repeat("t", 70000)}, // cut to 65535
		{Segment: 1},
	} {
		got, err := ReadFdRequest(bytes.NewReader(r.Append(nil)))
		require.NoError(t, err)
		want := r
		want.Token = r.Token[:min(len(r.Token), 65535)]
		assert.Equal(t, want, got)
	}
}

// A request that claims a 65535-byte token and sends 10 bytes of it costs
// about what it sent, not the claim: ReadFdRequest used to allocate the
// claimed length before reading a byte of it, so every half-sent request
// on a unit's fd socket held 64 KiB until the connection went.
func TestFdRequestClaimedTokenCostsWhatArrives(t *testing.T) {
	req := binary.LittleEndian.AppendUint32([]byte(FdMagic), 3)
	req = binary.LittleEndian.AppendUint16(req, 65535)
	req = append(req, "0123456789"...)
	_, err := ReadFdRequest(bytes.NewReader(req))
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.ErrorContains(t, err, "token of 65535 bytes, 10 came")

	const runs = 100
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		ReadFdRequest(bytes.NewReader(req))
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / runs
	assert.Less(t, per, uint64(8<<10), "bytes allocated per request claiming 65535 token bytes and sending 10")
}
