package storage

// A segment is one memfd (no name under /dev/shm, nothing left behind when
// the process dies) mapped MAP_SHARED into this process. Later its fd is
// handed to colocated clients, which map the same pages.
//
// First touch of a fresh 4 KiB shmem page costs microseconds on the
// development machines, so segments are pre-faulted when they are mapped
// and reused for the life of the unit. Faulting in a 64 MiB segment takes
// ~50 ms, and the reservation that maps it would wait that long (and with
// it every request of the event loop it runs on): so the first 256 KiB are
// faulted in at once and the rest in the background (MADV_POPULATE_WRITE,
// which faults pages in without touching their bytes, so puts may write
// into the segment meanwhile; a page a put reaches first it faults in
// itself). A kernel without MADV_POPULATE_WRITE (before 5.14) gets the
// whole segment faulted in at once, by writing to every page, as before
// anyone can use it. With
// [Config.HugePages] the unit tries hugetlb pages (MFD_HUGETLB, 2 MiB), which
// fault in several times faster; they need a reserved pool
// (/proc/sys/vm/nr_hugepages), so when that fails it falls back to 4 KiB
// pages with MADV_HUGEPAGE (transparent huge pages, effective when the
// kernel's shmem_enabled allows it).
//
// Every segment's memfd is sealed once sized (F_SEAL_SHRINK, F_SEAL_GROW,
// F_SEAL_SEAL): a client on the host that was handed the fd can read and
// write the bytes, but it cannot truncate the file under the unit's
// mapping, which would kill the unit with SIGBUS the next time it touched
// a page past the new end.

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

const hugePageSize = 2 << 20

// segment is one mapped memfd with the allocator of its offsets and the
// extents placed in it, by generation. The unit's mutex
// guards everything but id, fd, mem and huge, which never change while the
// segment is live.
type segment struct {
	id    uint32
	fd    int
	mem   []byte
	huge  bool // hugetlb pages
	alloc *allocator
	// byGen holds the segment's extents by generation, which names one
	// within the segment for its life: a cell's address finds its
	// extent in one step. (A B-tree by offset did it before: its
	// searches, inserts and deletes loaded an extent per comparison, a
	// cache miss apiece, a tenth of a small SET's server CPU.) Scans
	// that report extents sort what they report.
	byGen   map[uint32]*extent
	extents int    // extents placed here: reserved, committed or still leased
	gen     uint32 // the last generation handed out here (see maxGen)
	retired bool   // dropped from the unit; fd closed, pages replaced
	// unwatched: the unit's SegmentWatcher refused the segment (see
	// Unit.WatchSegments); it takes no new extent and is dropped once
	// empty, as when gen reaches maxGen.
	unwatched bool
	// pins, after the unit closed, counts the lease entries and reserved
	// extents that still reach the segment (see Unit.Close); the last
	// to go unmaps it.
	pins int
	// faulting, if set, is the background prefault (see prefault):
	// stop asks it to end early, faulted is closed when it has.
	faulting *backgroundFault
}

type backgroundFault struct {
	stop    atomic.Bool
	faulted chan struct{}
}

// prefaultNow is how much of a segment is faulted in before it is used;
// the rest is faulted in the background, prefaultChunk at a time.
const (
	prefaultNow   = 256 << 10
	prefaultChunk = 4 << 20
)

// maxGen is the last generation a segment hands out. Generations grow by
// one per extent within a segment and never wrap, so (segment,
// generation) names one extent for the unit's life (segment ids are never
// reused either): a segment that reached maxGen takes no new extent and
// is dropped once its last one goes. Tests lower it.
var maxGen uint32 = math.MaxUint32

// closedToNew reports whether s takes no new extent: it handed out its
// last generation, or the unit's watcher refused it.
func (s *segment) closedToNew() bool { return s.gen == maxGen || s.unwatched }

// mapOptions says how to back a segment.
type mapOptions struct {
	hugetlb  bool // MFD_HUGETLB; size must be a multiple of hugePageSize
	thp      bool // MADV_HUGEPAGE on 4 KiB shmem
	prefault bool
}

// mmap maps a segment's memfd; tests replace it to fail as the kernel
// would (ENOMEM).
var mmap = unix.Mmap

// mapSegment creates and maps a memfd of size bytes (a multiple of
// pageSize).
func mapSegment(id uint32, size int64, o mapOptions) (*segment, error) {
	name := fmt.Sprintf("tq-segment-%d", id)
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	if o.hugetlb {
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_2MB
	}
	fd, err := unix.MemfdCreate(name, flags)
	sealed := true
	if errors.Is(err, unix.EINVAL) && o.hugetlb {
		// Kernels before 4.16 cannot seal a hugetlb memfd and refuse
		// MFD_ALLOW_SEALING with MFD_HUGETLB: such a segment stays
		// unsealed. 4 KiB-page segments are always sealed.
		fd, err = unix.MemfdCreate(name, flags&^unix.MFD_ALLOW_SEALING)
		sealed = false
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return nil, errors.Join(fmt.Errorf("ftruncate %d bytes: %w", size, err), unix.Close(fd))
	}
	if sealed {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
			return nil, errors.Join(fmt.Errorf("seal memfd: %w", err), unix.Close(fd))
		}
	}
	mem, err := mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mmap %d bytes: %w", size, err), unix.Close(fd))
	}
	if o.thp {
		// Only a hint: the kernel ignores it unless shmem THP is enabled,
		// and the segment works either way. Given before any page is
		// faulted in, so that huge pages can back them.
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
	s := &segment{
		id:    id,
		fd:    fd,
		mem:   mem,
		huge:  o.hugetlb,
		alloc: newAllocator(size),
		byGen: map[uint32]*extent{},
	}
	if o.prefault {
		s.prefault()
	}
	return s, nil
}

// prefault faults in the segment's pages for writing: the first
// prefaultNow bytes now, the rest in the background where the kernel
// can fault pages in without writing to them, else all of them now.
func (s *segment) prefault() {
	now := min(len(s.mem), prefaultNow)
	if unix.Madvise(s.mem[:now], unix.MADV_POPULATE_WRITE) != nil {
		// Kernels before 5.14: write to every page, before the segment
		// is used (a write would clobber a put's bytes later).
		for i := 0; i < len(s.mem); i += pageSize {
			s.mem[i] = 0
		}
		return
	}
	if now == len(s.mem) {
		return
	}
	bf := &backgroundFault{faulted: make(chan struct{})}
	s.faulting = bf
	rest := s.mem[now:]
	go func() {
		defer close(bf.faulted)
		for off := 0; off < len(rest) && !bf.stop.Load(); off += prefaultChunk {
			if unix.Madvise(rest[off:min(off+prefaultChunk, len(rest))], unix.MADV_POPULATE_WRITE) != nil {
				return // the pages fault in as they are first written
			}
		}
	}()
}

// stopFaulting ends the background prefault, if any, and waits for it:
// the pages are not to be faulted in behind the segment's unmapping (or
// its replacement by anonymous memory, which would be faulted in whole).
func (s *segment) stopFaulting() {
	if bf := s.faulting; bf != nil {
		bf.stop.Store(true)
		<-bf.faulted
	}
}

// probeHugetlb reports whether a hugetlb memfd can be mapped now.
func probeHugetlb() bool {
	s, err := mapSegment(0, hugePageSize, mapOptions{hugetlb: true, prefault: true})
	if err != nil {
		return false
	}
	return s.close() == nil
}

func (s *segment) size() int64 { return int64(len(s.mem)) }

// retire closes the segment's fd and swaps its pages for private anonymous
// memory at the same address, so that a slice a caller kept past its
// lifetime (a [Reservation.Buf] written after the reaper aborted it) hits
// harmless pages instead of faulting or corrupting a reused segment. The
// address range is unmapped by close.
func (s *segment) retire() error {
	s.stopFaulting()
	s.retired = true
	return errors.Join(replaceWithAnon(s.mem), unix.Close(s.fd))
}

// close unmaps the segment and closes its fd (unless retired already).
func (s *segment) close() error {
	s.stopFaulting()
	err := unix.Munmap(s.mem)
	if !s.retired {
		err = errors.Join(err, unix.Close(s.fd))
	}
	return err
}
