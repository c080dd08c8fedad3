package shm

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
)

// TestSameUserNeedsNoToken: a unit that trusts peer credentials admits a
// client of its own user without the token on every socket the client
// needs — the wire socket, the fd socket its segments come through, and
// the control ring's handshake — so a put and a get work over both
// control channels. Before, the fd socket asked the token of everyone
// ("fetch segment 1: fd socket: wrong or missing token"), and the ring's
// handshake did too (the wire server read no credentials from a ring:
// "control ring: handshake: wrong or missing token").
func TestSameUserNeedsNoToken(t *testing.T) {
	for name, control := range map[string]Control{"socket": ControlSocket, "ring": ControlRing} {
		t.Run(name, func(t *testing.T) {
			tu := startUnit(t, unitConfig(), storage.ServerConfig{Token: "secret", TrustPeerCred: true})
			c := dialUnit(t, tu, Config{Control: control})
			addrs, err := c.Write(t.Context(), [][][]byte{{[]byte("hello")}})
			require.NoError(t, err)
			dst := [][]byte{make([]byte, 5)}
			require.NoError(t, c.Read(t.Context(), addrs, dst))
			require.Equal(t, "hello", string(dst[0]))
		})
	}
}

// TestNoTokenRefusedWithoutPeerCredTrust: without TrustPeerCred the same
// client, without the token, is refused at the handshake.
func TestNoTokenRefusedWithoutPeerCredTrust(t *testing.T) {
	tu := startUnit(t, unitConfig(), storage.ServerConfig{Token: "secret"})
	tr := New(Config{})
	defer tr.Close()
	_, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
	require.ErrorContains(t, err, "token")
}
