package client_test

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// TestConnectRequireServerProof: with $TQ_REQUIRE_SERVER_PROOF=1 a client
// connects to a cluster whose controller and unit hold its token (both
// prove it), and refuses a unit whose data plane answers without the
// challenge (run without a token) although the controller proved it:
// the data connections honour the setting too.
func TestConnectRequireServerProof(t *testing.T) {
	const token = "tok-connect-proof-0c9e1f7a"
	for _, unitToken := range []string{token, ""} {
		t.Run("unit token "+map[bool]string{true: "held", false: "none"}[unitToken != ""], func(t *testing.T) {
			t.Setenv(auth.EnvRequireServerProof, "1")
			_, ctrlAddr := serveController(t, newController(t), controller.ServerConfig{Token: token}, "tcp")
			ctx := t.Context()
			cfg := storage.DefaultConfig()
			cfg.Capacity = 16 << 20
			u, err := storage.NewUnit(0, cfg)
			require.NoError(t, err)
			t.Cleanup(func() { u.Close() })
			_, err = storage.AssignID(ctx, ctrlAddr, u, storage.JoinConfig{Token: token})
			require.NoError(t, err)
			srv := storage.NewServer(u, storage.ServerConfig{Token: unitToken})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			go srv.Serve(l)
			t.Cleanup(func() { srv.Close() })
			mem, err := storage.Join(ctx, ctrlAddr, u, storage.JoinConfig{Token: token, Addrs: []string{"tcp://" + l.Addr().String()}})
			require.NoError(t, err)
			t.Cleanup(func() { mem.Close() })

			c, err := client.Connect(ctx, ctrlAddr, client.ConnectConfig{Token: token, Name: "t", Transport: client.TransportTCP})
			if unitToken != "" {
				require.NoError(t, err)
				c.Close()
				return
			}
			require.ErrorIs(t, err, wire.ErrServerUnproven)
			assert.Contains(t, err.Error(), l.Addr().String())
			assert.Contains(t, err.Error(), auth.EnvRequireServerProof)
		})
	}
}
