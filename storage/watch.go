package storage

// SegmentWatcher is told about each segment of a unit's arena while it is
// live: an RDMA transport registers the memory once, when it is mapped,
// and deregisters it before it is dropped or unmapped. Both calls run
// under the unit's lock, before the segment takes its first extent and
// after it gave back its last: keep them short, and do not call the unit.
type SegmentWatcher interface {
	SegmentMapped(id uint32, mem []byte, fd int)
	SegmentDropped(id uint32)
}

// WatchSegments makes w the unit's segment watcher (nil: none) and tells
// it about every live segment at once.
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
	if w != nil {
		for _, s := range u.segs {
			w.SegmentMapped(s.id, s.mem, s.fd)
		}
	}
}

// dropped tells the watcher a live segment goes. The caller holds u.mu.
func (u *Unit) dropped(s *segment) {
	if u.watch != nil && !s.retired {
		u.watch.SegmentDropped(s.id)
	}
}
