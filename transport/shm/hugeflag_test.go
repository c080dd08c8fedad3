package shm

import (
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// The unit's fd reply carries a HugePages flag, and the client used to
// skip the seal check on its word alone: any unit (or anything listening
// at the fd socket path the unit named) could set the flag and hand over
// an unsealed memfd, or a plain file, then shrink it under the client's
// mapping — the next read of a view is SIGBUS, which kills the client.
// Whether an fd can be resized is the kernel's to say, not the peer's:
// the client now requires the seals of every fd except a hugetlbfs memfd
// on a kernel that cannot seal one (F_GET_SEALS fails there).
func TestHugePagesFlagDoesNotSkipSealCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		// open returns an unsealed fd of size bytes, or skips.
		open func(t *testing.T, size int64) int
	}{
		{"plain memfd", func(t *testing.T, size int64) int {
			fd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC)
			require.NoError(t, err)
			require.NoError(t, unix.Ftruncate(fd, size))
			return fd
		}},
		{"regular file", func(t *testing.T, size int64) int {
			f, err := os.Create(filepath.Join(t.TempDir(), "segment"))
			require.NoError(t, err)
			defer f.Close()
			require.NoError(t, f.Truncate(size))
			fd, err := unix.Dup(int(f.Fd()))
			require.NoError(t, err)
			return fd
		}},
		{"hugetlb memfd without seals", func(t *testing.T, size int64) int {
			fd, err := unix.MemfdCreate("unsealed-huge", unix.MFD_CLOEXEC|unix.MFD_HUGETLB|unix.MFD_HUGE_2MB)
			if err != nil {
				t.Skipf("no hugetlb memfd: %v", err)
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err != nil {
				unix.Close(fd)
				t.Skipf("this kernel cannot seal a hugetlb memfd (F_GET_SEALS: %v)", err)
			}
			require.NoError(t, unix.Ftruncate(fd, size))
			return fd
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tu, addr := unitWithExtent(t)
			tr := New(Config{Control: ControlSocket})
			defer tr.Close()
			c, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: tu.u.ID(), Addr: tu.addr})
			require.NoError(t, err)
			defer c.Close()

			const size = 16 << 20 // the unit's segment size, a multiple of 2 MiB
			fd := tc.open(t, size)
			defer unix.Close(fd)
			c.fdSock = fakeFdSocket(t, wire.FdReply{Status: wire.FdOK, HugePages: true, Size: size}, fd)

			l, err := c.View(t.Context(), []engine.RemoteAddr{addr})
			if err == nil {
				defer l.Release()
				unix.Ftruncate(fd, 0) // what the client risks
				faulted := func() (faulted bool) {
					defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
					defer func() { faulted = recover() != nil }()
					sink = l.Bytes(0)[0]
					return false
				}()
				t.Fatalf("View mapped an unsealed %s the reply flagged as huge pages (reading its view after it shrank faulted: %v); want an error wrapping %v", tc.name, faulted, engine.ErrCorrupt)
			}
			require.ErrorIs(t, err, engine.ErrCorrupt)
			t.Log(err)
		})
	}
}

// fakeFdSocket listens where a unit's fd socket could be and answers each
// request with rep and fds; it returns its path.
func fakeFdSocket(t *testing.T, rep wire.FdReply, fds ...int) string {
	t.Helper()
	fake, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "fake.shm"), Net: "unix"})
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() {
		fake.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			uc, err := fake.AcceptUnix()
			if err != nil {
				return
			}
			if _, err := wire.ReadFdRequest(uc); err == nil {
				uc.WriteMsgUnix(rep.Append(nil), unix.UnixRights(fds...), nil)
			}
			uc.Close()
		}
	}()
	return fake.Addr().String()
}
