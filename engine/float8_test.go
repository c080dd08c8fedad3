package engine

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// f8Format describes a float8 format for the slow reference below, which
// knows nothing of f8Round.
type f8Format struct {
	mant, bias int
	maxCode    uint8   // largest finite magnitude
	overflow   float64 // the value one step above maxCode, as if the format went on
	overCode   uint8   // what overflow becomes (NaN or Inf)
	nanCode    uint8   // the quiet NaN a NaN becomes
}

var (
	e4m3fnFormat = f8Format{mant: 3, bias: 7, maxCode: 0x7e, overflow: 480, overCode: 0x7f, nanCode: 0x7f}
	e5m2Format   = f8Format{mant: 2, bias: 15, maxCode: 0x7b, overflow: 65536, overCode: 0x7c, nanCode: 0x7e}
)

// value decodes a finite magnitude code from its definition.
func (f f8Format) value(c uint8) float64 {
	exp, mant := int(c>>f.mant), float64(c&(1<<f.mant-1))
	if exp == 0 {
		return math.Ldexp(mant, 1-f.bias-f.mant)
	}
	return math.Ldexp(1+mant/float64(int(1)<<f.mant), exp-f.bias)
}

// nearest rounds x to the format by searching every finite code: the
// nearest wins, ties go to the even code (of two neighbours, one is even),
// and the step past the largest finite value stands for overflow.
func (f f8Format) nearest(x float32) uint8 {
	if math.IsNaN(float64(x)) {
		return f.nanCode | signOf(x)
	}
	a := math.Abs(float64(x))
	if math.IsInf(float64(x), 0) || a > f.overflow {
		return f.overCode | signOf(x)
	}
	lo := uint8(0) // largest code at or below a
	for c := uint8(0); c <= f.maxCode; c++ {
		if f.value(c) <= a {
			lo = c
		}
	}
	hiVal, over := f.overflow, true
	if lo < f.maxCode {
		hiVal, over = f.value(lo+1), false
	}
	dLo, dHi := a-f.value(lo), hiVal-a
	var c uint8
	switch {
	case dLo < dHi, dLo == dHi && lo&1 == 0:
		c = lo
	case over:
		c = f.overCode
	default:
		c = lo + 1
	}
	return c | signOf(x)
}

func signOf(x float32) uint8 { return uint8(math.Float32bits(x)>>24) & 0x80 }

func TestF8E4M3FNFromFloat32(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   float32
		want F8E4M3FN
	}{
		{"zero", 0, 0x00},
		{"negative zero", float32(math.Copysign(0, -1)), 0x80},
		{"one", 1, 0x38},
		{"-1.5", -1.5, 0xbc},
		{"largest finite", 448, 0x7e},
		{"-448", -448, 0xfe},
		{"tie below the NaN rounds to 448", 464, 0x7e},
		{"above the tie is NaN", math.Nextafter32(464, 1000), 0x7f},
		{"480 is NaN", 480, 0x7f},
		{"overflow is NaN", 1e6, 0x7f},
		{"negative overflow is NaN", -1e6, 0xff},
		{"+Inf is NaN", float32(math.Inf(1)), 0x7f},
		{"-Inf is -NaN", float32(math.Inf(-1)), 0xff},
		{"NaN", float32(math.NaN()), 0x7f},
		{"negative NaN", math.Float32frombits(0xffc00001), 0xff},
		{"smallest normal", 0x1p-6, 0x08},
		{"smallest subnormal", 0x1p-9, 0x01},
		{"largest subnormal", 7 * 0x1p-9, 0x07},
		{"-smallest subnormal", -0x1p-9, 0x81},
		{"half the smallest subnormal ties to zero", 0x1p-10, 0x00},
		{"just above half rounds up", math.Nextafter32(0x1p-10, 1), 0x01},
		{"subnormal tie to even", 3 * 0x1p-10, 0x02},
		{"subnormal rounds up into the normals", 7.5 * 0x1p-9, 0x08},
		{"tiny", math.SmallestNonzeroFloat32, 0x00},
		{"-tiny", -math.SmallestNonzeroFloat32, 0x80},
		{"normal tie down to even", 1 + 1.0/16, 0x38},
		{"normal tie up to even", 1 + 3.0/16, 0x3a},
		{"rounding carries into the exponent", 1.9375, 0x40},
		{"0.1", 0.1, 0x1d},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, F8E4M3FNFromFloat32(tt.in), "F8E4M3FNFromFloat32(%g)", tt.in)
		})
	}
}

func TestF8E5M2FromFloat32(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   float32
		want F8E5M2
	}{
		{"zero", 0, 0x00},
		{"negative zero", float32(math.Copysign(0, -1)), 0x80},
		{"one", 1, 0x3c},
		{"-2", -2, 0xc0},
		{"largest finite", 57344, 0x7b},
		{"below the tie", math.Nextafter32(61440, 0), 0x7b},
		{"tie rounds to infinity", 61440, 0x7c},
		{"overflow", 1e9, 0x7c},
		{"negative overflow", -1e9, 0xfc},
		{"+Inf", float32(math.Inf(1)), 0x7c},
		{"-Inf", float32(math.Inf(-1)), 0xfc},
		{"NaN", float32(math.NaN()), 0x7e},
		{"negative NaN", math.Float32frombits(0xff800001), 0xfe},
		{"smallest normal", 0x1p-14, 0x04},
		{"smallest subnormal", 0x1p-16, 0x01},
		{"largest subnormal", 3 * 0x1p-16, 0x03},
		{"half the smallest subnormal ties to zero", 0x1p-17, 0x00},
		{"subnormal tie to even", 3 * 0x1p-17, 0x02},
		{"subnormal rounds up into the normals", 3.5 * 0x1p-16, 0x04},
		{"normal tie down to even", 1.125, 0x3c},
		{"normal tie up to even", 1.375, 0x3e},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, F8E5M2FromFloat32(tt.in), "F8E5M2FromFloat32(%g)", tt.in)
		})
	}
}

func TestF8Float32(t *testing.T) {
	e4 := map[F8E4M3FN]float32{
		0x00: 0, 0x38: 1, 0xbc: -1.5, 0x7e: 448, 0xfe: -448, 0x08: 0x1p-6,
		0x01: 0x1p-9, 0x07: 7 * 0x1p-9, 0x1d: 0.1015625,
	}
	for h, want := range e4 {
		assert.Equal(t, want, h.Float32(), "F8E4M3FN(%#02x)", uint8(h))
	}
	assert.Equal(t, uint32(0x80000000), math.Float32bits(F8E4M3FN(0x80).Float32()), "negative zero")
	for _, h := range []F8E4M3FN{0x7f, 0xff} {
		f := h.Float32()
		assert.True(t, math.IsNaN(float64(f)), "F8E4M3FN(%#02x) widens to %g, want NaN", uint8(h), f)
		assert.Equal(t, h&0x80 != 0, math.Signbit(float64(f)), "sign of NaN %#02x", uint8(h))
	}
	e5 := map[F8E5M2]float32{
		0x00: 0, 0x3c: 1, 0xc0: -2, 0x7b: 57344, 0xfb: -57344, 0x04: 0x1p-14,
		0x01: 0x1p-16, 0x03: 3 * 0x1p-16,
		0x7c: float32(math.Inf(1)), 0xfc: float32(math.Inf(-1)),
	}
	for h, want := range e5 {
		assert.Equal(t, want, h.Float32(), "F8E5M2(%#02x)", uint8(h))
	}
	for _, h := range []F8E5M2{0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff} {
		f := h.Float32()
		assert.True(t, math.IsNaN(float64(f)), "F8E5M2(%#02x) widens to %g, want NaN", uint8(h), f)
		assert.Equal(t, h&0x80 != 0, math.Signbit(float64(f)), "sign of NaN %#02x", uint8(h))
	}
}

// TestF8Exhaustive widens every bit pattern, checks it against the
// format's definition, and narrows it back: every finite value and
// infinity comes back bit for bit, NaNs come back as the quiet NaN.
func TestF8Exhaustive(t *testing.T) {
	for b := range 256 {
		h := F8E4M3FN(b)
		f := h.Float32()
		if b&0x7f == 0x7f {
			require.True(t, math.IsNaN(float64(f)), "%#02x", b)
		} else {
			want := e4m3fnFormat.value(uint8(b) & 0x7f)
			if b&0x80 != 0 {
				want = -want
			}
			require.Equal(t, want, float64(f), "F8E4M3FN(%#02x)", b)
			require.Equal(t, b&0x80 != 0, math.Signbit(float64(f)), "sign of %#02x", b)
		}
		require.Equal(t, h, F8E4M3FNFromFloat32(f), "F8E4M3FN %#02x -> %g -> back", b, f)
	}
	for b := range 256 {
		h := F8E5M2(b)
		f := h.Float32()
		switch {
		case b&0x7f > 0x7c:
			require.True(t, math.IsNaN(float64(f)), "%#02x", b)
			require.Equal(t, F8E5M2(b&0x80|0x7e), F8E5M2FromFloat32(f), "NaN %#02x comes back quiet", b)
			continue
		case b&0x7f == 0x7c:
			require.True(t, math.IsInf(float64(f), 0), "%#02x", b)
		default:
			want := e5m2Format.value(uint8(b) & 0x7f)
			if b&0x80 != 0 {
				want = -want
			}
			require.Equal(t, want, float64(f), "F8E5M2(%#02x)", b)
		}
		require.Equal(t, b&0x80 != 0, math.Signbit(float64(f)), "sign of %#02x", b)
		require.Equal(t, h, F8E5M2FromFloat32(f), "F8E5M2 %#02x -> %g -> back", b, f)
	}
}

// TestF8Nearest checks the rounding of float32s against the slow search:
// random bit patterns (NaNs, infinities, huge and tiny values), values in
// each format's range, and the midpoints between neighbouring codes and
// the float32s on either side of them.
func TestF8Nearest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var in []float32
	for range 100000 {
		in = append(in, math.Float32frombits(r.Uint32()))
		in = append(in, float32(math.Ldexp(r.Float64()*2-1, r.IntN(40)-24)))
	}
	for _, f := range []f8Format{e4m3fnFormat, e5m2Format} {
		for c := uint8(0); c < f.maxCode; c++ {
			mid := float32((f.value(c) + f.value(c+1)) / 2)
			for _, m := range []float32{mid, -mid} {
				in = append(in, m, math.Nextafter32(m, 0), math.Nextafter32(m, 2*m))
			}
		}
		over := float32((f.value(f.maxCode) + f.overflow) / 2)
		in = append(in, over, math.Nextafter32(over, 0), math.Nextafter32(over, 2*over), float32(f.overflow))
	}
	for _, x := range in {
		if got, want := uint8(F8E4M3FNFromFloat32(x)), e4m3fnFormat.nearest(x); got != want {
			t.Fatalf("F8E4M3FNFromFloat32(%g = %#08x): got %#02x, want %#02x", x, math.Float32bits(x), got, want)
		}
		if got, want := uint8(F8E5M2FromFloat32(x)), e5m2Format.nearest(x); got != want {
			t.Fatalf("F8E5M2FromFloat32(%g = %#08x): got %#02x, want %#02x", x, math.Float32bits(x), got, want)
		}
	}
}
