//go:build !linux

package wire

import "net"

// peerCred returns -1 and 0: peer credentials are read on Linux only.
func peerCred(net.Conn) (uid int, pid int32) { return -1, 0 }

// SameUser reports false: peer credentials are read on Linux only.
func SameUser(net.Conn) bool { return false }
