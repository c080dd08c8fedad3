package shmring

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// FuzzRegion runs one side of a channel over a region the peer
// scribbled on. The peer's real Conn formats nothing (the region is
// Format's) but writes a frame into its ring; then fuzzed words land
// anywhere in the header — magic, version, ring size, the closed bits,
// both rings' indices and sleep words — before this side's NewConn,
// Read and Write. NewConn refuses a header it cannot use as corrupt or
// of another version; after that, nothing panics, no call hangs (every
// one has an expired deadline), a read returns at most a ring's bytes,
// and every failure is corruption, the peer's close or the deadline.
func FuzzRegion(f *testing.F) {
	word := func(off uint16, v uint64) []byte {
		b := binary.LittleEndian.AppendUint16(nil, off)
		return binary.NativeEndian.AppendUint64(b, v)
	}
	frame := []byte("a frame the peer wrote, as wire would")
	f.Add(frame, []byte(nil), false)
	f.Add(frame, []byte(nil), true)
	f.Add(frame, word(offRing0+ringCtlLen+offTail, 1<<20), false)                            // ring 1 tail past the size
	f.Add(frame, word(offRing0+ringCtlLen+offHead, 1<<63), false)                            // ring 1 head
	f.Add(frame, word(offRing0+offHead, MinRingSize+1), false)                               // ring 0 head, the one A writes
	f.Add(frame, word(offRing0+offTail, ^uint64(0)), true)                                   // ring 0 tail, the one B reads
	f.Add(frame, word(8, MinRingSize*2), false)                                              // ring size
	f.Add(frame, word(4, version+1), true)                                                   // version
	f.Add(frame, word(offClosed, 3), false)                                                  // closed bits
	f.Add(frame, append(word(offRing0+offData, 1<<32), word(offRing0+offSpace, 1)...), true) // sleep words
	f.Add([]byte(nil), word(0, 0), false)                                                    // magic

	f.Fuzz(func(t *testing.T, data, scribble []byte, sideB bool) {
		mem := make([]byte, Size(MinRingSize))
		if err := Format(mem, MinRingSize); err != nil {
			t.Fatal(err)
		}
		me, peerSide := SideA, SideB
		if sideB {
			me, peerSide = SideB, SideA
		}
		peer, err := NewConn(mem, peerSide, nil, nil, Config{Spin: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		peer.SetWriteDeadline(time.Now())
		peer.Write(data) // what fits
		for len(scribble) >= 10 {
			off := int(binary.LittleEndian.Uint16(scribble)) % (HeaderSize - 7)
			copy(mem[off:off+8], scribble[2:10])
			scribble = scribble[10:]
		}
		c, err := NewConn(mem, me, nil, nil, Config{Spin: -1})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("NewConn on a scribbled header: %v, not an error wrapping %v or %v", err, ErrCorrupt, ErrVersion)
			}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now())
		expected := func(what string, err error) {
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, os.ErrDeadlineExceeded) &&
				!errors.Is(err, io.EOF) && !errors.Is(err, ErrPeerClosed) {
				t.Fatalf("%s: unexpected error %v", what, err)
			}
		}
		p := make([]byte, 3*MinRingSize)
		for range 3 {
			n, err := c.Read(p)
			if n > MinRingSize {
				t.Fatalf("read %d bytes from a ring of %d", n, MinRingSize)
			}
			expected("read", err)
			if err != nil {
				break
			}
		}
		n, err := c.Write(p)
		if n > MinRingSize {
			t.Fatalf("wrote %d bytes into a ring of %d", n, MinRingSize)
		}
		expected("write", err)
	})
}
