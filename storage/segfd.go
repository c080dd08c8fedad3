package storage

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// DupSegment returns a duplicate of live segment id's memfd (close-on-exec)
// with the segment's description, for handing the segment to another
// process. The caller owns the returned fd and must close it. The dup is
// taken under the unit's lock, so it can never race with the segment being
// dropped (which closes the unit's own fd). A segment that is not live —
// never mapped, or dropped — is an error wrapping [engine.ErrNotFound];
// after [Unit.Close], [engine.ErrClosed].
func (u *Unit) DupSegment(id uint32) (int, SegmentInfo, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return -1, SegmentInfo{}, u.opErr("dup segment", engine.ErrClosed)
	}
	s, ok := u.byID[id]
	if !ok {
		return -1, SegmentInfo{}, u.opErr("dup segment", fmt.Errorf("segment %d: %w", id, engine.ErrNotFound))
	}
	fd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, SegmentInfo{}, u.opErr("dup segment", fmt.Errorf("dup segment %d: %w", id, err))
	}
	return fd, SegmentInfo{ID: s.id, Size: s.size(), Fd: fd, HugePages: s.huge}, nil
}
