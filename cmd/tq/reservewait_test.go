package main

import (
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// A WRITE to a full unit waits for room for tq serve --reserve-wait, or
// for the request's wait_ms where shorter, and the refusal says which;
// the connection then serves the next request (a client that heard the
// refusal in time keeps it rather than dropping it).
func TestReserveWaitBoundsAWaitingWrite(t *testing.T) {
	bin := tqBinary(t)
	var stderr syncBuffer
	p, err := spawnServe(t.TempDir(), nil, &stderr, func(l string) { t.Logf("serve: %s", l) }, bin,
		"--listen", "127.0.0.1:0", "--unit-listen", "127.0.0.1:0", "--socket-dir", t.TempDir(),
		"--units", "1", "--capacity", "4MiB", "--reserve-wait", "300ms")
	require.NoError(t, err)
	t.Cleanup(p.kill)
	unitTCP := ""
	for _, a := range p.units[0] {
		if strings.HasPrefix(a, "tcp://") {
			unitTCP = a
		}
	}
	require.NotEmpty(t, unitTCP)
	nc := authenticated(t, unitTCP, p.token(t))

	id := uint64(1)
	write := func(req *wirepb.WriteRequest) (code wirepb.Code, msg string) {
		t.Helper()
		id++
		body, err := proto.Marshal(req)
		require.NoError(t, err)
		size := int(req.Sizes[0])
		h := wire.Header{Version: wire.Version, Op: wire.OpWrite, ID: id, BodyLen: uint32(len(body)), PayloadLen: uint64(size)}
		_, err = nc.Write(append(append(h.Append(nil), body...), make([]byte, size)...))
		require.NoError(t, err)
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		hb := make([]byte, wire.HeaderSize)
		_, err = io.ReadFull(nc, hb)
		require.NoError(t, err)
		rh, err := wire.DecodeHeader(hb)
		require.NoError(t, err)
		require.Equal(t, id, rh.ID)
		rb := make([]byte, rh.BodyLen)
		_, err = io.ReadFull(nc, rb)
		require.NoError(t, err)
		_, err = io.CopyN(io.Discard, nc, int64(rh.PayloadLen))
		require.NoError(t, err)
		if rh.Flags&wire.FlagError == 0 {
			return 0, ""
		}
		var e wirepb.Error
		require.NoError(t, proto.Unmarshal(rb, &e))
		return e.Code, e.Message
	}

	for n := 0; ; n++ { // fill the unit
		require.Less(t, n, 64, "a 4 MiB unit took 64 MiB")
		if code, _ := write(&wirepb.WriteRequest{Sizes: []uint64{256 << 10}, NoWait: true}); code != 0 {
			require.Equal(t, wirepb.Code_CODE_CAPACITY, code)
			break
		}
	}
	for _, tc := range []struct {
		waitMs uint64
		want   string
	}{
		{0, "no room within the unit's reserve wait of 300ms"},
		{5000, "no room within the unit's reserve wait of 300ms"}, // longer than the unit's: the unit's
		{50, "no room within the request's wait of 50ms"},
		{1, "no room within the request's wait of 1ms"},
		{299, "no room within the request's wait of 299ms"},
		{300, "no room within the unit's reserve wait of 300ms"},
		{301, "no room within the unit's reserve wait of 300ms"},
		{math.MaxUint64, "no room within the unit's reserve wait of 300ms"}, // no overflow into a short or negative wait
		{math.MaxUint64 / uint64(time.Millisecond), "no room within the unit's reserve wait of 300ms"},
	} {
		code, msg := write(&wirepb.WriteRequest{Sizes: []uint64{256 << 10}, WaitMs: tc.waitMs})
		assert.Equal(t, wirepb.Code_CODE_CAPACITY, code, "wait_ms %d: %s", tc.waitMs, msg)
		assert.Contains(t, msg, tc.want, "wait_ms %d", tc.waitMs)
	}
}
