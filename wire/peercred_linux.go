package wire

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerCred returns the uid and the pid of the process at the other end of
// a unix socket (SO_PEERCRED, as they were when the peer connected), or
// -1 and 0 for any other connection or when the kernel will not say (a
// pid is 0 too for a peer in a pid namespace this process cannot see).
func peerCred(nc net.Conn) (uid int, pid int32) {
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
