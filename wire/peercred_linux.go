package wire

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peerCred returns the uid and the pid of the process at the other end of
// a unix socket (SO_PEERCRED, as they were when the peer connected), or
// -1 and 0 for any other connection or when the kernel will not say (a
// pid is 0 too for a peer in a pid namespace this process cannot see). A
// connection carried over something else with a unix socket to the same
// peer beside it (a shared-memory control ring and its liveness socket)
// names that socket by a Link method; its peer is the one asked.
func peerCred(nc net.Conn) (uid int, pid int32) {
	if l, ok := nc.(interface{ Link() net.Conn }); ok && l.Link() != nil {
		nc = l.Link()
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return -1, 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, 0
	}
	uid = -1
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid, pid = int(cred.Uid), cred.Pid
		}
	})
	return uid, pid
}

// SameUser reports whether nc's peer is a process of this process's
// effective user on a unix socket (SO_PEERCRED): what a server that
// trusts peer credentials (ServerConfig.TrustPeerCred) admits without the
// token, on a socket beside the wire server (a storage unit's fd socket)
// as on the wire server's own.
func SameUser(nc net.Conn) bool {
	uid, _ := peerCred(nc)
	return uid >= 0 && uid == os.Geteuid()
}
