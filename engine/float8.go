package engine

import "math"

// The two OCP 8-bit floating-point formats (OCP 8-bit Floating Point
// Specification, OFP8), named as PyTorch and ml_dtypes name them. Columns
// carry the bit patterns unchanged; the conversions here are for callers
// that make or read values. Conversion from float32 rounds to nearest, ties
// to even, and does not saturate, as ml_dtypes' and PyTorch's casts do;
// callers that want saturation clamp to the largest finite value first.

// F8E4M3FN is a float8_e4m3fn value kept as its bit pattern: S.EEEE.MMM
// with bias 7, subnormals, no infinities, NaN only S.1111.111 (0x7f, 0xff),
// largest finite ±448 (S.1111.110).
type F8E4M3FN uint8

// F8E5M2 is a float8_e5m2 value kept as its bit pattern: S.EEEEE.MM with
// bias 15, IEEE 754 style: subnormals, ±Inf S.11111.00 (0x7c, 0xfc), NaN
// S.11111.{01,10,11}, largest finite ±57344 (S.11110.11).
type F8E5M2 uint8

// F8E4M3FNFromFloat32 rounds f to float8_e4m3fn, ties to even. A value
// whose rounded magnitude exceeds 448 (|f| > 464), an infinity and a NaN
// all become NaN with f's sign: the format has no infinity, and it does
// not saturate.
func F8E4M3FNFromFloat32(f float32) F8E4M3FN {
	b := math.Float32bits(f)
	sign := uint8(b>>24) & 0x80
	abs := b & 0x7fffffff
	if abs >= 0x7f800000 { // Inf or NaN: e4m3fn has no infinity
		return F8E4M3FN(sign | 0x7f)
	}
	r := f8Round(abs, 3, 7)
	if r > 0x7e {
		return F8E4M3FN(sign | 0x7f)
	}
	return F8E4M3FN(sign | uint8(r))
}

// F8E5M2FromFloat32 rounds f to float8_e5m2, ties to even. A value whose
// rounded magnitude exceeds 57344 (|f| >= 61440) becomes infinity, and a
// NaN the quiet NaN S.11111.10 (its payload dropped), each with f's sign.
func F8E5M2FromFloat32(f float32) F8E5M2 {
	b := math.Float32bits(f)
	sign := uint8(b>>24) & 0x80
	abs := b & 0x7fffffff
	switch {
	case abs > 0x7f800000: // NaN
		return F8E5M2(sign | 0x7e)
	case abs == 0x7f800000:
		return F8E5M2(sign | 0x7c)
	}
	r := f8Round(abs, 2, 15)
	if r > 0x7b {
		return F8E5M2(sign | 0x7c)
	}
	return F8E5M2(sign | uint8(r))
}

// f8Round rounds a finite, non-negative float32 (its bits) to a float8 with
// m mantissa bits and exponent bias bias, ties to even, and returns the
// float8's bits without the sign. The result may lie beyond the format's
// largest finite value (a carry into the top exponent); the caller decides
// what overflow becomes.
func f8Round(abs uint32, m, bias int) uint32 {
	if abs < 0x800000 {
		return 0 // a float32 subnormal or zero: far below every float8 subnormal
	}
	e := int(abs>>23) - 127 + bias // the float8's biased exponent
	mant := abs&0x7fffff | 0x800000
	shift := 23 - m
	var base uint32
	if e >= 1 {
		base = uint32(e-1) << m // q keeps the implicit one, which adds the last 1 << m
	} else {
		shift += 1 - e // subnormal: units of 2^(1-bias-m)
		if shift > 24 {
			return 0 // below half the smallest subnormal
		}
	}
	q := mant >> shift
	rem := mant & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || (rem == half && q&1 == 1) {
		q++ // a carry into the exponent is the right rounding
	}
	return base + q
}

// Float32 widens h exactly. NaN widens to a quiet float32 NaN with h's sign.
func (h F8E4M3FN) Float32() float32 {
	sign := uint32(h&0x80) << 24
	exp := uint32(h>>3) & 0xf
	mant := uint32(h & 0x7)
	switch {
	case exp == 0xf && mant == 0x7:
		return math.Float32frombits(sign | 0x7f800000 | mant<<20)
	case exp == 0: // zero or subnormal: mant × 2^-9
		return math.Float32frombits(sign | math.Float32bits(float32(mant)*0x1p-9))
	default:
		return math.Float32frombits(sign | (exp+127-7)<<23 | mant<<20)
	}
}

// Float32 widens h exactly; infinities stay infinities and NaN stays NaN.
func (h F8E5M2) Float32() float32 {
	sign := uint32(h&0x80) << 24
	exp := uint32(h>>2) & 0x1f
	mant := uint32(h & 0x3)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<21)
	case exp == 0: // zero or subnormal: mant × 2^-16
		return math.Float32frombits(sign | math.Float32bits(float32(mant)*0x1p-16))
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<21)
	}
}
