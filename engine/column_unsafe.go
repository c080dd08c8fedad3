package engine

import "unsafe"

// All reinterpretation between typed slices and bytes lives in this file.

// asBytes returns the bytes backing vals, without copying.
func asBytes[T Elem](vals []T) []byte {
	if len(vals) == 0 {
		return nil
	}
	var z T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vals))), len(vals)*int(unsafe.Sizeof(z)))
}

// fromBytes returns b as a []T without copying. b's length must be a
// multiple of T's size; alignment is checked by the caller through
// [aligned].
func fromBytes[T Elem](b []byte) []T {
	var z T
	n := len(b) / int(unsafe.Sizeof(z))
	if n == 0 {
		return []T{}
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// alignOf returns the alignment Go requires of a T, which for complex
// types is less than their size.
func alignOf[T Elem]() int {
	var z T
	return int(unsafe.Alignof(z))
}

// aligned reports whether b starts at an address suitable for elements of
// the given alignment.
func aligned(b []byte, align int) bool {
	if len(b) == 0 || align <= 1 {
		return true
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(align) == 0
}

// stringBytes returns the bytes of s without copying; the result must not be
// modified.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
