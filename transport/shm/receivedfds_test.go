package shm

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// openFile is an fd and the file it was opened on, to tell later whether
// the fd still refers to that file (a closed fd's number may be reused).
type openFile struct {
	fd       int
	dev, ino uint64
}

func (f openFile) open() bool {
	var st unix.Stat_t
	return unix.Fstat(f.fd, &st) == nil && uint64(st.Dev) == f.dev && st.Ino == f.ino
}

// pipeFiles returns the two ends of a new pipe; the test closes them.
func pipeFiles(t *testing.T) (openFile, openFile) {
	t.Helper()
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	var fs [2]openFile
	for i, fd := range p {
		var st unix.Stat_t
		require.NoError(t, unix.Fstat(fd, &st))
		fs[i] = openFile{fd: fd, dev: uint64(st.Dev), ino: st.Ino}
	}
	return fs[0], fs[1]
}

// Control data that does not parse whole is an error, and the fds of the
// SCM_RIGHTS messages before the part that does not parse are closed: they
// were installed in this process, and nobody else will close them.
// receivedFds used to return the error alone, leaking them. The fds in
// the part that does not parse are left alone: its length is wrong, so
// its words may not be fds this process was given.
func TestReceivedFdsClosesWhatCameWhenControlDataIsBad(t *testing.T) {
	got, other := pipeFiles(t)
	defer unix.Close(other.fd)
	good := unix.UnixRights(got.fd)
	bad := unix.UnixRights(other.fd)
	bad = bad[:unix.CmsgLen(4)-2] // its header claims more bytes than follow
	fds, err := receivedFds(append(good, bad...))
	require.Error(t, err)
	assert.ErrorContains(t, err, "parse control message")
	assert.Empty(t, fds)
	if !assert.False(t, got.open(), "fd %d of the well-formed SCM_RIGHTS message is still open", got.fd) {
		unix.Close(got.fd)
	}
	assert.True(t, other.open(), "fd %d named only by the malformed message was closed", other.fd)

	// Well-formed control data gives its fds.
	a, b := pipeFiles(t)
	defer unix.Close(a.fd)
	defer unix.Close(b.fd)
	fds, err = receivedFds(append(unix.UnixRights(a.fd), unix.UnixRights(b.fd)...))
	require.NoError(t, err)
	assert.Equal(t, []int{a.fd, b.fd}, fds)
	assert.True(t, a.open() && b.open())
}
