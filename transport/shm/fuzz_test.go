package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// fuzzMemfd is one of the descriptors FuzzFdReply hands the decoder as
// the one that came with a reply.
type fuzzMemfd struct {
	fd     int
	size   uint64
	sealed bool
}

// fuzzMemfds makes the descriptors a hostile unit might send: sealed
// memfds, an unsealed one, and a pipe (not a memfd at all, size 0).
func fuzzMemfds(f *testing.F) []fuzzMemfd {
	var fds []fuzzMemfd
	for _, m := range []struct {
		size   int64
		sealed bool
	}{{4096, true}, {4096, false}, {64 << 10, true}} {
		fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, m.size); err != nil {
			f.Fatal(err)
		}
		if m.sealed {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
				f.Fatal(err)
			}
		}
		fds = append(fds, fuzzMemfd{fd, uint64(m.size), m.sealed})
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return append(fds, fuzzMemfd{fd: p[0]})
}

// FuzzFdReply decodes fuzzed fd socket replies — their bytes, how many
// fds came with them, whether the kernel cut the rest, and which fd came
// (a sealed or unsealed memfd, or a pipe) — as exchange does. A reply
// is taken only when it is a well-formed FdOK reply with exactly one fd
// whose size is the one the reply announces and which is sealed against
// resizing: a memfd smaller than announced would be mapped past its end
// (SIGBUS on access). Every refusal says what was wrong.
func FuzzFdReply(f *testing.F) {
	fds := fuzzMemfds(f)
	for _, rep := range []wire.FdReply{
		{Status: wire.FdOK, Size: 4096},
		{Status: wire.FdOK, Size: 64 << 10, HugePages: true},
		{Status: wire.FdOK, Size: 1 << 40},
		{Status: wire.FdBusy},
		{Status: wire.FdNotFound},
		{Status: wire.FdNotThisUnit},
		{Status: 200},
	} {
		for which := range len(fds) {
			f.Add(rep.Append(nil), uint8(1), false, uint8(which))
		}
		f.Add(rep.Append(nil), uint8(0), false, uint8(0))
		f.Add(rep.Append(nil), uint8(2), true, uint8(0))
	}
	f.Add([]byte("TQF1"), uint8(1), false, uint8(0))
	f.Add([]byte("TQC1\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00"), uint8(1), false, uint8(0))

	c := &Conn{unit: 7}
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8, ctrunc bool, which uint8) {
		m := fds[int(which)%len(fds)]
		rep, err := decodeFdReply(b, int(nfds), ctrunc, nil)
		wantOK := len(b) == wire.FdReplySize && string(b[:4]) == wire.FdMagic && b[4] == byte(wire.FdOK) && !ctrunc && nfds == 1
		if (err == nil) != wantOK {
			t.Fatalf("reply %q with %d fds (cut: %v): got %v, want ok=%v", b, nfds, ctrunc, err, wantOK)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "fd") {
				t.Fatalf("refusal %q does not say it is about the fd socket's reply", err)
			}
			var busy fdBusyError
			if errors.As(err, &busy) != (len(b) == wire.FdReplySize && string(b[:4]) == wire.FdMagic && b[4] == byte(wire.FdBusy)) {
				t.Fatalf("reply %q: %v taken as busy (try again) or not, wrongly", b, err)
			}
			return
		}
		err = c.checkMemfd(m.fd, rep)
		wantOK = rep.Size == m.size && m.sealed
		if (err == nil) != wantOK {
			t.Fatalf("reply of %d bytes with a memfd of %d (sealed: %v): got %v, want ok=%v", rep.Size, m.size, m.sealed, err, wantOK)
		}
		if err != nil {
			if !errors.Is(err, engine.ErrCorrupt) {
				t.Fatalf("memfd refused with %v, not an error wrapping %v", err, engine.ErrCorrupt)
			}
			if !strings.Contains(err.Error(), "unit 7") {
				t.Fatalf("memfd refused with %q, which does not name the unit", err)
			}
			// An unsealed one is refused first: its size may change.
			if m.sealed && rep.Size != m.size && !strings.Contains(err.Error(), fmt.Sprint(rep.Size)) {
				t.Fatalf("memfd of the wrong size refused with %q, which does not name the size announced, %d", err, rep.Size)
			}
		}
	})
}

// FuzzReserveReply decodes fuzzed RESERVE replies (the extents, in
// either form of wirepb.Addrs) for fuzzed sizes, as reserve does, and
// looks each extent up in a segment of a fuzzed size, as reserve does
// in its mapping. A reply is taken only with one extent of each size
// asked for, and each extent's bytes lie inside its segment. Decoding
// allocates in proportion to the reply received and the sizes asked
// for, not to the counts the reply claims.
func FuzzReserveReply(f *testing.F) {
	enc := func(extents []engine.RemoteAddr) []byte {
		b, err := proto.Marshal(&wirepb.ReserveReply{Reservation: 9, Extents: wire.RangesToPB(extents)})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	sizes := func(s ...uint16) []byte {
		var b []byte
		for _, n := range s {
			b = binary.LittleEndian.AppendUint16(b, n)
		}
		return b
	}
	f.Add(enc([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 0, Len: 100}, {Segment: 1, Gen: 1, Offset: 128, Len: 100}}), sizes(100, 100), uint32(4096))
	f.Add(enc([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 4000, Len: 100}}), sizes(100), uint32(4096))
	f.Add(enc([]engine.RemoteAddr{{Segment: 2, Gen: 3, Offset: 64, Len: 3}, {Len: 0}, {Segment: 2, Gen: 3, Offset: 1024, Len: 7}}), sizes(3, 0, 7), uint32(2048))
	f.Add(enc([]engine.RemoteAddr{{Segment: 1, Gen: 1, Offset: 1 << 63, Len: 1 << 62}}), sizes(0), uint32(4096))
	// The run form, as the unit encodes extents of one size in a row.
	runs := wire.RunsToPB([]engine.CellRun{{Count: 4, First: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 0, Len: 64}}})
	b, err := proto.Marshal(&wirepb.ReserveReply{Reservation: 9, Extents: runs})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, sizes(64, 64, 64, 64), uint32(4096))
	f.Add(b, sizes(64), uint32(4096))
	// 20 bytes claiming 4Mi extents (wire.MaxSegments) of one run.
	b, err = proto.Marshal(&wirepb.ReserveReply{Extents: &wirepb.Addrs{RunCount: []uint32{wire.MaxSegments}, RunSegment: []uint32{1}, RunGen: []uint32{1}, RunOffset: []uint64{0}, RunLen: []uint64{0}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, sizes(0), uint32(4096))

	f.Fuzz(func(t *testing.T, body, rawSizes []byte, segSize uint32) {
		var reply wirepb.ReserveReply
		if proto.Unmarshal(body, &reply) != nil {
			return
		}
		asked := make([]uint64, len(rawSizes)/2)
		for i := range asked {
			asked[i] = uint64(binary.LittleEndian.Uint16(rawSizes[2*i:]))
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		addrs, err := reservedExtents(reply.Extents, asked)
		runtime.ReadMemStats(&after)
		// Decoding may allocate its answer (at most what was asked for)
		// and what the reply's bytes hold, not what its counts claim.
		if grew, bound := after.TotalAlloc-before.TotalAlloc, uint64(64*len(asked)+16*len(body)+4096); grew > bound {
			t.Fatalf("decoding a reply of %d bytes for %d extents allocated %d bytes (bound %d)", len(body), len(asked), grew, bound)
		}
		if err != nil {
			if !errors.Is(err, engine.ErrCorrupt) && !errors.Is(err, engine.ErrInvalid) && !errors.Is(err, wire.ErrFrame) {
				t.Fatalf("reply refused with %v, not as corrupt or malformed", err)
			}
			return
		}
		if len(addrs) != len(asked) {
			t.Fatalf("took %d extents for %d asked", len(addrs), len(asked))
		}
		seg := make([]byte, segSize%(1<<16))
		for i, a := range addrs {
			if a.Len != asked[i] {
				t.Fatalf("took extent %d of %d bytes, asked for %d", i, a.Len, asked[i])
			}
			w, err := window(seg, a)
			if err != nil {
				if !errors.Is(err, engine.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("segment %d", a.Segment)) {
					t.Fatalf("extent %d outside its segment refused with %q, not naming the segment as corrupt", i, err)
				}
				continue
			}
			if uint64(len(w)) != a.Len || uint64(cap(w)) != a.Len {
				t.Fatalf("extent %d of %d bytes got a window of %d (cap %d)", i, a.Len, len(w), cap(w))
			}
		}
	})
}
