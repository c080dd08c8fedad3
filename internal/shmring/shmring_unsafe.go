package shmring

// Every unsafe cast of the package: typed atomics over words of the shared
// region.

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

func aligned(b []byte) bool { return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 == 0 }

// u64At and u32At check the word lies in b by its length, not by
// touching its last byte: a plain read of a word the peer may be storing
// to is a data race (the race detector sees one when the peer is a
// goroutine of this process, as in the tests).
func u64At(b []byte, off int) *atomic.Uint64 {
	if off < 0 || len(b)-off < 8 {
		panic(fmt.Sprintf("shmring: word at %d past a region of %d bytes", off, len(b)))
	}
	return (*atomic.Uint64)(unsafe.Pointer(unsafe.SliceData(b[off:])))
}

func u32At(b []byte, off int) *atomic.Uint32 {
	if off < 0 || len(b)-off < 4 {
		panic(fmt.Sprintf("shmring: word at %d past a region of %d bytes", off, len(b)))
	}
	return (*atomic.Uint32)(unsafe.Pointer(unsafe.SliceData(b[off:])))
}
