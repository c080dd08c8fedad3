//go:build armbe || arm64be || m68k || mips || mips64 || mips64p32 || ppc || ppc64 || s390 || s390x || shbe || sparc || sparc64

package engine

// Cells are little-endian on the wire and in storage, and columns view
// host memory as typed values (DenseOf, Values, Row): on a big-endian host
// they would write cells no other host reads back the same. The build
// stops here instead, naming why.
var _ = TQ_needs_a_little_endian_host
