//go:build !(linux && cgo && rdma)

package rdma

import (
	"errors"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
)

// A build without the shim answers ErrNotSupported, naming what it lacks.
func TestStubNotSupported(t *testing.T) {
	_, err := OpenDevice("emu0")
	if !errors.Is(err, engine.ErrNotSupported) || err == engine.ErrNotSupported {
		t.Fatalf("OpenDevice: got %v, want an error wrapping ErrNotSupported", err)
	}
	tr := New(Config{Device: "emu0"})
	defer tr.Close()
	_, err = tr.Dial(t.Context(), engine.PeerInfo{Addr: "tcp://127.0.0.1:1"})
	if !errors.Is(err, engine.ErrNotSupported) {
		t.Fatalf("Dial: got %v, want an error wrapping ErrNotSupported", err)
	}
	testenv.SkipIfNotSupported(t, err)
}
