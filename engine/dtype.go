package engine

import (
	"fmt"
	"math"
)

// DType is the element type of a column.
type DType uint8

// The dtypes TQ carries. Opaque columns use Bytes. The numbers are private
// to the process: the wire, the state files and the journal carry dtype
// names ([DType.String]), so new dtypes are appended before numDTypes.
const (
	InvalidDType DType = iota
	Float64
	Float32
	Float16
	BFloat16
	Int64
	Int32
	Int16
	Int8
	Uint8
	Bool // one byte, 0 or 1; read back, any nonzero byte is true (see [Values])
	Bytes
	Uint16
	Uint32
	Uint64
	Float8E4M3FN // OCP FP8 E4M3, finite only ("float8_e4m3fn"); see [F8E4M3FN]
	Float8E5M2   // OCP FP8 E5M2, with infinities ("float8_e5m2"); see [F8E5M2]
	Complex64
	Complex128
	numDTypes
)

var dtypeNames = [numDTypes]string{
	InvalidDType: "invalid",
	Float64:      "float64",
	Float32:      "float32",
	Float16:      "float16",
	BFloat16:     "bfloat16",
	Int64:        "int64",
	Int32:        "int32",
	Int16:        "int16",
	Int8:         "int8",
	Uint8:        "uint8",
	Bool:         "bool",
	Bytes:        "bytes",
	Uint16:       "uint16",
	Uint32:       "uint32",
	Uint64:       "uint64",
	Float8E4M3FN: "float8_e4m3fn",
	Float8E5M2:   "float8_e5m2",
	Complex64:    "complex64",
	Complex128:   "complex128",
}

var dtypeSizes = [numDTypes]int{
	Float64: 8, Float32: 4, Float16: 2, BFloat16: 2,
	Int64: 8, Int32: 4, Int16: 2, Int8: 1, Uint8: 1, Bool: 1, Bytes: 1,
	Uint16: 2, Uint32: 4, Uint64: 8, Float8E4M3FN: 1, Float8E5M2: 1,
	Complex64: 8, Complex128: 16,
}

// String returns the dtype's canonical name ("float32").
func (d DType) String() string {
	if d < numDTypes {
		return dtypeNames[d]
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size returns the size of one element in bytes (1 for Bytes, 0 for invalid).
func (d DType) Size() int {
	if d < numDTypes {
		return dtypeSizes[d]
	}
	return 0
}

// Valid reports whether d is one of the defined dtypes.
func (d DType) Valid() bool { return d > InvalidDType && d < numDTypes }

// ParseDType maps a canonical name back to its dtype. It also accepts the
// torch-style aliases "float", "double", "half", "long", "int". It refuses
// "float8_e4m3": ml_dtypes and XLA use that name for the IEEE-style E4M3
// (infinities, largest finite 240), a different format from float8_e4m3fn.
func ParseDType(s string) (DType, error) {
	for i, n := range dtypeNames {
		if i > 0 && n == s {
			return DType(i), nil
		}
	}
	switch s {
	case "float":
		return Float32, nil
	case "double":
		return Float64, nil
	case "half":
		return Float16, nil
	case "long":
		return Int64, nil
	case "int":
		return Int32, nil
	}
	return InvalidDType, fmt.Errorf("unknown dtype %q: %w", s, ErrInvalid)
}

// MarshalText implements encoding.TextMarshaler.
func (d DType) MarshalText() ([]byte, error) {
	if d != InvalidDType && !d.Valid() {
		return nil, fmt.Errorf("marshal %v: %w", d, ErrInvalid)
	}
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *DType) UnmarshalText(b []byte) error {
	if string(b) == "invalid" || len(b) == 0 {
		*d = InvalidDType
		return nil
	}
	v, err := ParseDType(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// F16 is an IEEE 754 half-precision value kept as its bit pattern, so
// NaN payloads and infinities survive every path unchanged.
type F16 uint16

// BF16 is a bfloat16 value kept as its bit pattern.
type BF16 uint16

// F16FromFloat32 rounds f to the nearest half-precision value (ties to
// even). NaN stays NaN, overflow becomes infinity.
func F16FromFloat32(f float32) F16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	switch {
	case exp == 0xff: // Inf or NaN
		if mant == 0 {
			return F16(sign | 0x7c00)
		}
		return F16(sign | 0x7e00 | uint16(mant>>13))
	case exp-127+15 >= 0x1f: // overflow
		return F16(sign | 0x7c00)
	case exp-127+15 <= 0: // subnormal or zero in half precision
		e := exp - 127 + 15
		if e < -10 {
			return F16(sign)
		}
		mant |= 0x800000
		shift := uint32(14 - e)
		half := mant >> shift
		rem := mant & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return F16(sign | uint16(half))
	default:
		e := uint16(exp - 127 + 15)
		half := uint32(e)<<10 | mant>>13
		rem := mant & 0x1fff
		if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
			half++ // may carry into the exponent, which is the right rounding
		}
		return F16(sign | uint16(half))
	}
}

// Float32 widens h exactly.
func (h F16) Float32() float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	}
}

// BF16FromFloat32 rounds f to bfloat16 (ties to even); NaN stays NaN.
func BF16FromFloat32(f float32) BF16 {
	b := math.Float32bits(f)
	if b&0x7f800000 == 0x7f800000 && b&0x7fffff != 0 {
		return BF16(b>>16 | 0x40) // quiet NaN, sign kept
	}
	b += 0x7fff + (b>>16)&1
	return BF16(b >> 16)
}

// Float32 widens h exactly.
func (h BF16) Float32() float32 { return math.Float32frombits(uint32(h) << 16) }
