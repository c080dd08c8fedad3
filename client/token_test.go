package client_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/wire"
)

// A client of the user who started the servers finds their token with no
// configuration; anyone else is refused with wire.ErrUnauthenticated.
func TestDialFindsToken(t *testing.T) {
	dataDir := t.TempDir()
	token, err := auth.LoadOrCreateToken(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"tcp", "unix"} {
		_, addr := serveController(t, newController(t), controller.ServerConfig{Token: token}, network)
		for _, tc := range []struct {
			name, explicit, env, dataDir string
			ok                           bool
		}{
			{"token file", "", "", dataDir, true},
			{"$TQ_TOKEN", "", token, t.TempDir(), true},
			{"explicit", token, "", t.TempDir(), true},
			{"explicit wins over the file", "wrong", "", dataDir, false},
			{"none", "", "", t.TempDir(), false},
		} {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				t.Setenv(auth.EnvToken, tc.env)
				if tc.env == "" {
					os.Unsetenv(auth.EnvToken) // set but empty is refused
				}
				t.Setenv(auth.EnvDataDir, tc.dataDir)
				m, err := client.DialMeta(context.Background(), addr, client.RemoteConfig{Token: tc.explicit})
				if tc.ok {
					if err != nil {
						t.Fatalf("dial: %v", err)
					}
					m.Close()
					return
				}
				if !errors.Is(err, wire.ErrUnauthenticated) {
					t.Fatalf("dial: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
				}
				if !strings.Contains(err.Error(), filepath.Join(tc.dataDir, auth.TokenFile)) {
					t.Errorf("the error does not say where the token is looked for: %v", err)
				}
				_, err = client.Connect(context.Background(), addr, client.ConnectConfig{Token: tc.explicit})
				if !errors.Is(err, wire.ErrUnauthenticated) {
					t.Fatalf("connect: got %v, want an error wrapping %v", err, wire.ErrUnauthenticated)
				}
			})
		}
	}
}

// A token as long as a token may be (auth.MaxToken, 4 KiB, the bound of
// a whole HELLO) authenticates a client with a long name: the HELLO
// carries a proof of the token (wire/spec.md, "Handshake"), never the
// token, so its length costs the HELLO nothing.
func TestATokenAsLongAsATokenMayBeConnects(t *testing.T) {
	token := strings.Repeat("t", auth.MaxToken)
	_, addr := serveController(t, newController(t), controller.ServerConfig{Token: token}, "tcp")
	m, err := client.DialMeta(t.Context(), addr, client.RemoteConfig{Token: token, Name: strings.Repeat("n", 2048)})
	if err != nil {
		t.Fatalf("dial with a token of %d bytes: %v", len(token), err)
	}
	m.Close()
}
