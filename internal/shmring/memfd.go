package shmring

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// MemfdName is the name of a channel's memfd, as /proc/<pid>/maps shows
// it ("/memfd:tq-ring (deleted)").
const MemfdName = "tq-ring"

// Create makes a memfd (close-on-exec) holding a fresh channel with rings
// of ringSize bytes (0: DefaultRingSize), maps it shared and formats it.
// The memfd is sealed against shrinking and growing, so a peer holding it
// cannot truncate it under this side's mapping (which would SIGBUS this
// process). The caller owns fd (close it once handed over) and the
// mapping (unmap it with [Unmap], or hand it to [NewConn]).
func Create(ringSize int) (fd int, mem []byte, err error) {
	if ringSize == 0 {
		ringSize = DefaultRingSize
	}
	if !validRingSize(ringSize) {
		return -1, nil, fmt.Errorf("ring size %d is not a power of two in [%d, %d]: %w", ringSize, MinRingSize, MaxRingSize, ErrCorrupt)
	}
	fd, err = unix.MemfdCreate(MemfdName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, nil, fmt.Errorf("memfd_create: %w", err)
	}
	size := Size(ringSize)
	fail := func(err error) (int, []byte, error) {
		return -1, nil, errors.Join(err, unix.Close(fd))
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(fmt.Errorf("ftruncate %d bytes: %w", size, err))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail(fmt.Errorf("seal memfd: %w", err))
	}
	mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fail(fmt.Errorf("mmap %d bytes: %w", size, err))
	}
	if err := Format(mem, ringSize); err != nil {
		return fail(errors.Join(err, unix.Munmap(mem)))
	}
	return fd, mem, nil
}

// Map maps a channel's memfd received from its creator and checks its
// header. The caller still owns fd and may close it at once. The memfd
// must be sealed against resizing, and its seals are checked before its
// size: the creator holds it too, and may shrink it until it seals it (a
// mapping past a memfd's end is SIGBUS on every access).
func Map(fd int) ([]byte, error) {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("channel fd is not a sealable memfd (F_GET_SEALS: %w): %w", err, ErrCorrupt)
	}
	if want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW; seals&want != want {
		return nil, fmt.Errorf("channel memfd not sealed against resizing (seals %#x): %w", seals, ErrCorrupt)
	}
	if h := testHookMapChecks; h != nil {
		h(fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fstat channel memfd: %w", err)
	}
	if st.Size < HeaderSize || st.Size > int64(Size(MaxRingSize)) {
		return nil, fmt.Errorf("channel memfd of %d bytes: %w", st.Size, ErrCorrupt)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", st.Size, err)
	}
	if _, err := check(mem); err != nil {
		return nil, errors.Join(err, unix.Munmap(mem))
	}
	return mem, nil
}

// Unmap unmaps a region returned by [Create] or [Map].
func Unmap(mem []byte) error {
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("munmap channel: %w", err)
	}
	return nil
}

// testHookMapChecks, if set, runs between Map's first check of a memfd
// and its second: tests act there as the peer that sent it.
var testHookMapChecks func(fd int)
