package storage

// A segment is one memfd (no name under /dev/shm, nothing left behind when
// the process dies) mapped MAP_SHARED into this process. Later its fd is
// handed to colocated clients, which map the same pages.
//
// First touch of a fresh 4 KiB shmem page costs microseconds on the
// development machines, so segments are pre-faulted when they are mapped
// (MAP_POPULATE) and reused for the life of the unit. With
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
}

// maxGen is the last generation a segment hands out. Generations grow by
// one per extent within a segment and never wrap, so (segment,
// generation) names one extent for the unit's life (segment ids are never
// reused either): a segment that reached maxGen takes no new extent and
// is dropped once its last one goes. Tests lower it.
var maxGen uint32 = math.MaxUint32

// mapOptions says how to back a segment.
type mapOptions struct {
	hugetlb  bool // MFD_HUGETLB; size must be a multiple of hugePageSize
	thp      bool // MADV_HUGEPAGE on 4 KiB shmem
	prefault bool
}

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
	mflags := unix.MAP_SHARED
	if o.prefault && !o.thp {
		mflags |= unix.MAP_POPULATE
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, mflags)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mmap %d bytes: %w", size, err), unix.Close(fd))
	}
	if o.thp {
		// Only a hint: the kernel ignores it unless shmem THP is enabled,
		// and the segment works either way.
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
		if o.prefault {
			prefault(mem)
		}
	}
	return &segment{
		id:    id,
		fd:    fd,
		mem:   mem,
		huge:  o.hugetlb,
		alloc: newAllocator(size),
		byGen: map[uint32]*extent{},
	}, nil
}

// prefault faults in every page of mem for writing, after MADV_HUGEPAGE had
// its chance to pick huge pages (MAP_POPULATE would fault 4 KiB pages in
// before the advice).
func prefault(mem []byte) {
	if unix.Madvise(mem, unix.MADV_POPULATE_WRITE) == nil {
		return
	}
	for i := 0; i < len(mem); i += pageSize { // kernels before 5.14
		mem[i] = 0
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
	s.retired = true
	return errors.Join(replaceWithAnon(s.mem), unix.Close(s.fd))
}

// close unmaps the segment and closes its fd (unless retired already).
func (s *segment) close() error {
	err := unix.Munmap(s.mem)
	if !s.retired {
		err = errors.Join(err, unix.Close(s.fd))
	}
	return err
}
