package wire

import (
	"fmt"
	"strings"

	"github.com/tqgo/tq/engine"
)

// ParseAddr splits "tcp://host:port", "unix:///path" or a bare "host:port"
// into a network and an address for net.Dial and net.Listen.
func ParseAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "tcp://"):
		network, address = "tcp", strings.TrimPrefix(addr, "tcp://")
	case strings.HasPrefix(addr, "unix://"):
		network, address = "unix", strings.TrimPrefix(addr, "unix://")
	case strings.Contains(addr, "://"):
		return "", "", fmt.Errorf("address %q: unknown scheme (want tcp:// or unix://): %w", addr, engine.ErrInvalid)
	default:
		network, address = "tcp", addr
	}
	if address == "" {
		return "", "", fmt.Errorf("address %q is empty: %w", addr, engine.ErrInvalid)
	}
	return network, address, nil
}

// FormatAddr is the inverse of [ParseAddr].
func FormatAddr(network, address string) string { return network + "://" + address }
