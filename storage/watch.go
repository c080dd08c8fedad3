package storage

// SegmentWatcher is told about each segment of a unit's arena while it is
// live: an RDMA transport registers the memory once, when it is mapped,
// and deregisters it before it is dropped or unmapped. Both calls run
// under the unit's lock, before the segment takes its first extent and
// after it gave back its last: keep them short, and do not call the unit.
//
// A watcher that cannot take a segment (a device that could not register
// it) says so from SegmentMapped, and the unit keeps no extent there that
// the watcher's clients could not reach: a new segment is unmapped at
// once and the Reserve that needed it fails with an error wrapping
// engine.ErrCapacity and the watcher's; a segment already live when
// [Unit.WatchSegments] is called takes no new extent and is dropped once
// empty. SegmentDropped is still called for such a segment when it goes.
type SegmentWatcher interface {
	SegmentMapped(id uint32, mem []byte, fd int) error
	SegmentDropped(id uint32)
}

// WatchSegments makes w the unit's segment watcher (nil: none) and tells
// it about every live segment at once; the segments w refuses take no new
// extent from then on and are dropped once empty.
func (u *Unit) WatchSegments(w SegmentWatcher) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return
	}
	if u.watch != nil {
		for _, s := range u.segs {
			u.watch.SegmentDropped(s.id)
		}
	}
	u.watch = w
	var refused []*segment
	for _, s := range u.segs {
		s.unwatched = w != nil && w.SegmentMapped(s.id, s.mem, s.fd) != nil
		if s.unwatched && s.extents == 0 {
			refused = append(refused, s)
		}
	}
	for _, s := range refused {
		u.dropClosed(s)
	}
}

// dropped tells the watcher a live segment goes. The caller holds u.mu.
func (u *Unit) dropped(s *segment) {
	if u.watch != nil && !s.retired {
		u.watch.SegmentDropped(s.id)
	}
}
