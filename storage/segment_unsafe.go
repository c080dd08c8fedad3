package storage

// Every unsafe operation of the package lives in this file.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// replaceWithAnon maps private anonymous pages over mem in place
// (MAP_FIXED), dropping the shared pages that were there.
func replaceWithAnon(mem []byte) error {
	_, err := unix.MmapPtr(-1, 0, unsafe.Pointer(unsafe.SliceData(mem)), uintptr(len(mem)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE)
	return err
}
