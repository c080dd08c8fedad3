//go:build !linux

package wire

import "net"

// peerUID returns -1: peer credentials are read on Linux only.
func peerUID(net.Conn) int { return -1 }
