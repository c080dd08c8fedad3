package testenv

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// The address is free and outside the ephemeral range, which a port
// picked by listening on :0 is in.
func TestFreeLoopbackAddrIsBelowTheEphemeralRange(t *testing.T) {
	for range 20 {
		addr := FreeLoopbackAddr(t)
		_, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		p, err := strconv.Atoi(port)
		require.NoError(t, err)
		require.Less(t, p, ephemeralLow(), addr)
		l, err := net.Listen("tcp", addr)
		require.NoError(t, err, "bind %s", addr)
		l.Close()
	}
}
