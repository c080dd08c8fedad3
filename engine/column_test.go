package engine

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Named element types map through their underlying kind.
type (
	Score float32
	Tok   int64
	Flag  bool
	onF16 F16 // an integer type: only F16 itself is a float16
)

func TestDTypeOf(t *testing.T) {
	tests := []struct {
		name string
		got  DType
		want DType
	}{
		{"float64", DTypeOf[float64](), Float64},
		{"float32", DTypeOf[float32](), Float32},
		{"F16", DTypeOf[F16](), Float16},
		{"BF16", DTypeOf[BF16](), BFloat16},
		{"int64", DTypeOf[int64](), Int64},
		{"int32", DTypeOf[int32](), Int32},
		{"int16", DTypeOf[int16](), Int16},
		{"int8", DTypeOf[int8](), Int8},
		{"uint8", DTypeOf[uint8](), Uint8},
		{"byte", DTypeOf[byte](), Uint8},
		{"bool", DTypeOf[bool](), Bool},
		{"uint16", DTypeOf[uint16](), Uint16},
		{"uint32", DTypeOf[uint32](), Uint32},
		{"uint64", DTypeOf[uint64](), Uint64},
		{"F8E4M3FN", DTypeOf[F8E4M3FN](), Float8E4M3FN},
		{"F8E5M2", DTypeOf[F8E5M2](), Float8E5M2},
		{"complex64", DTypeOf[complex64](), Complex64},
		{"complex128", DTypeOf[complex128](), Complex128},
		{"type defined on F16", DTypeOf[onF16](), Uint16},
		{"Score", DTypeOf[Score](), Float32},
		{"Tok", DTypeOf[Tok](), Int64},
		{"Flag", DTypeOf[Flag](), Bool},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
}

func TestDTypeText(t *testing.T) {
	for d := InvalidDType + 1; d < numDTypes; d++ {
		t.Run(d.String(), func(t *testing.T) {
			b, err := d.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			var got DType
			if err := got.UnmarshalText(b); err != nil {
				t.Fatal(err)
			}
			if got != d {
				t.Errorf("got %v, want %v", got, d)
			}
			if !d.Valid() || d.Size() == 0 {
				t.Errorf("got Valid %v Size %d, want a valid dtype with a size", d.Valid(), d.Size())
			}
		})
	}
	aliases := map[string]DType{"float": Float32, "double": Float64, "half": Float16, "long": Int64, "int": Int32}
	for s, want := range aliases {
		if got, err := ParseDType(s); err != nil || got != want {
			t.Errorf("ParseDType(%q): got %v, %v, want %v", s, got, err, want)
		}
	}
	// float8_e4m3 is ml_dtypes' IEEE-style E4M3, not float8_e4m3fn.
	for _, s := range []string{"complex32", "float8_e4m3", "Float32", "uint128"} {
		if _, err := ParseDType(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseDType(%s): got %v, want ErrInvalid", s, err)
		}
	}
	if _, err := DType(200).MarshalText(); !errors.Is(err, ErrInvalid) {
		t.Errorf("MarshalText(200): got %v, want ErrInvalid", err)
	}
	var d DType = Float32
	if err := d.UnmarshalText(nil); err != nil || d != InvalidDType {
		t.Errorf("UnmarshalText(empty): got %v, %v, want invalid", d, err)
	}
	if got := DType(200).String(); got != "dtype(200)" {
		t.Errorf("got %q, want dtype(200)", got)
	}
}

func TestKindText(t *testing.T) {
	for _, k := range []Kind{InvalidKind, Dense, Ragged, Opaque} {
		b, _ := k.MarshalText()
		var got Kind
		if err := got.UnmarshalText(b); err != nil || got != k {
			t.Errorf("round trip of %v: got %v, %v", k, got, err)
		}
	}
	var k Kind
	if err := k.UnmarshalText([]byte("sparse")); !errors.Is(err, ErrInvalid) {
		t.Errorf("got %v, want ErrInvalid", err)
	}
}

// Bit patterns every path must carry unchanged.
var (
	f64Specials = []float64{
		math.Float64frombits(0x7ff8000000000123), // quiet NaN with payload
		math.Float64frombits(0xfff0000000000001), // negative signalling NaN
		math.Inf(1), math.Inf(-1),
		math.Copysign(0, -1),
		math.SmallestNonzeroFloat64,
		math.MaxFloat64,
		1.5,
	}
	f32Specials = []float32{
		math.Float32frombits(0x7fc00123), // quiet NaN with payload
		math.Float32frombits(0xff800001), // negative signalling NaN
		float32(math.Inf(1)), float32(math.Inf(-1)),
		float32(math.Copysign(0, -1)),
		math.SmallestNonzeroFloat32,
		math.MaxFloat32,
		-2.25,
	}
	f16Specials  = []F16{0x7e01, 0x7c00, 0xfc00, 0x8000, 0x0001, 0x7bff, 0x7c01, 0x3c00}
	bf16Specials = []BF16{0x7fc1, 0x7f80, 0xff80, 0x8000, 0x0001, 0x7f7f, 0x7f81, 0x3f80}
	u16Specials  = []uint16{0, math.MaxUint16, 1, 0x8000, 0x7fff, 0x0102, 0xfffe, 3}
	u32Specials  = []uint32{0, math.MaxUint32, 1, 0x80000000, 0x7fffffff, 0x01020304, 0xfffffffe, 3}
	u64Specials  = []uint64{0, math.MaxUint64, 1, 1 << 63, math.MaxInt64, 0x0102030405060708, math.MaxUint64 - 1, 3}
	// NaN, negative NaN, largest finite ±448, negative zero, smallest and
	// largest subnormal, one.
	f8e4m3Specials = []F8E4M3FN{0x7f, 0xff, 0x7e, 0xfe, 0x80, 0x01, 0x07, 0x38}
	// Inf, -Inf, three NaNs, largest finite, negative zero, smallest subnormal.
	f8e5m2Specials = []F8E5M2{0x7c, 0xfc, 0x7d, 0x7e, 0xff, 0x7b, 0x80, 0x01}
	c64Specials    = []complex64{
		complex(math.Float32frombits(0x7fc00123), math.Float32frombits(0xff800001)),
		complex(float32(math.Inf(1)), float32(math.Copysign(0, -1))),
		complex(math.MaxFloat32, math.SmallestNonzeroFloat32),
		1 + 2i, -3i, 0, complex(float32(math.Inf(-1)), 1), 5,
	}
	c128Specials = []complex128{
		complex(math.Float64frombits(0x7ff8000000000123), math.Float64frombits(0xfff0000000000001)),
		complex(math.Inf(1), math.Copysign(0, -1)),
		complex(math.MaxFloat64, math.SmallestNonzeroFloat64),
		1 + 2i, -3i, 0, complex(math.Inf(-1), 1), 5,
	}
)

func TestColumnRoundTrip(t *testing.T) {
	t.Run("float64", func(t *testing.T) { testRoundTrip(t, f64Specials) })
	t.Run("float32", func(t *testing.T) { testRoundTrip(t, f32Specials) })
	t.Run("float16", func(t *testing.T) { testRoundTrip(t, f16Specials) })
	t.Run("bfloat16", func(t *testing.T) { testRoundTrip(t, bf16Specials) })
	t.Run("int64", func(t *testing.T) {
		testRoundTrip(t, []int64{math.MinInt64, math.MaxInt64, -1, 0, 1, 2, 3, 4})
	})
	t.Run("int32", func(t *testing.T) {
		testRoundTrip(t, []int32{math.MinInt32, math.MaxInt32, -1, 0, 1, 2, 3, 4})
	})
	t.Run("int16", func(t *testing.T) {
		testRoundTrip(t, []int16{math.MinInt16, math.MaxInt16, -1, 0, 1, 2, 3, 4})
	})
	t.Run("int8", func(t *testing.T) { testRoundTrip(t, []int8{math.MinInt8, math.MaxInt8, -1, 0, 1, 2, 3, 4}) })
	t.Run("uint8", func(t *testing.T) { testRoundTrip(t, []uint8{0, 255, 1, 2, 3, 4, 5, 6}) })
	t.Run("bool", func(t *testing.T) {
		testRoundTrip(t, []bool{true, false, false, true, true, true, false, false})
	})
	t.Run("Score", func(t *testing.T) { testRoundTrip(t, []Score{1, 2, 3, 4, -0.5, 6, 7, 8}) })
	t.Run("uint16", func(t *testing.T) { testRoundTrip(t, u16Specials) })
	t.Run("uint32", func(t *testing.T) { testRoundTrip(t, u32Specials) })
	t.Run("uint64", func(t *testing.T) { testRoundTrip(t, u64Specials) })
	t.Run("float8_e4m3fn", func(t *testing.T) { testRoundTrip(t, f8e4m3Specials) })
	t.Run("float8_e5m2", func(t *testing.T) { testRoundTrip(t, f8e5m2Specials) })
	t.Run("complex64", func(t *testing.T) { testRoundTrip(t, c64Specials) })
	t.Run("complex128", func(t *testing.T) { testRoundTrip(t, c128Specials) })
}

// testRoundTrip sends vals (8 of them, as 4 rows of shape (2)) through
// every column operation and checks the bytes come back unchanged.
func testRoundTrip[T Elem](t *testing.T, vals []T) {
	t.Helper()
	if len(vals) != 8 {
		t.Fatalf("test needs 8 values, got %d", len(vals))
	}
	dt := DTypeOf[T]()
	seg := func(parts ...[]T) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, asBytes(p)...)
		}
		return out
	}
	want := func(name string, got []T, err error, parts ...[]T) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(seg(parts...), asBytes(got)); diff != "" {
			t.Errorf("%s bytes (-want +got):\n%s", name, diff)
		}
	}

	c, err := DenseOf(vals, 2)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind() != Dense || c.DType() != dt || c.Len() != 4 || !c.Shape().Equal(Shape{2}) {
		t.Fatalf("got %v %v %d rows of %v, want dense %v 4 rows of (2)", c.Kind(), c.DType(), c.Len(), c.Shape(), dt)
	}
	if got, want := c.Size(), 8*dt.Size(); got != want {
		t.Errorf("Size: got %d, want %d", got, want)
	}
	got, err := Values[T](c)
	want("Values", got, err, vals)
	got, err = Row[T](c, 1)
	want("Row(1)", got, err, vals[2:4])

	tk, err := c.Take([]int{3, 0, 3})
	if err != nil {
		t.Fatal(err)
	}
	got, err = Values[T](tk)
	want("Take", got, err, vals[6:8], vals[0:2], vals[6:8])

	sl, err := c.Slice(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err = Values[T](sl)
	want("Slice", got, err, vals[2:6])

	cl := c.Clone()
	got, err = Values[T](cl)
	want("Clone", got, err, vals)
	if &cl.Data()[0] == &c.Data()[0] {
		t.Error("Clone shares bytes with its source")
	}

	cat, err := ConcatColumns(c, sl, tk)
	if err != nil {
		t.Fatal(err)
	}
	if cat.Kind() != Dense || cat.Len() != 9 {
		t.Errorf("Concat: got %v with %d rows, want dense with 9", cat.Kind(), cat.Len())
	}
	got, err = Values[T](cat)
	want("Concat", got, err, vals, vals[2:6], vals[6:8], vals[0:2], vals[6:8])

	rg := RaggedOf([][]T{vals[0:3], vals[3:3], vals[3:8]})
	got, err = Values[T](rg)
	want("RaggedOf", got, err, vals)
	got, err = Row[T](rg, 2)
	want("ragged Row(2)", got, err, vals[3:8])
	rt, err := rg.Take([]int{2, 0})
	if err != nil {
		t.Fatal(err)
	}
	got, err = Values[T](rt)
	want("ragged Take", got, err, vals[3:8], vals[0:3])
	rs, err := rg.Slice(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err = Values[T](rs)
	want("ragged Slice", got, err, vals[3:8])
	got, err = Values[T](rg.Clone())
	want("ragged Clone", got, err, vals)
	rc, err := ConcatColumns(rg, c)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Kind() != Ragged || rc.Len() != 7 {
		t.Errorf("ragged Concat: got %v with %d rows, want ragged with 7", rc.Kind(), rc.Len())
	}
	got, err = Values[T](rc)
	want("ragged Concat", got, err, vals, vals)

	// Bytes taken at a misaligned address still read back (as a copy).
	buf := make([]byte, 1+len(asBytes(vals)))
	copy(buf[1:], asBytes(vals))
	mis, err := NewDense(dt, 8, nil, buf[1:])
	if err != nil {
		t.Fatal(err)
	}
	got, err = Values[T](mis)
	want("misaligned Values", got, err, vals)
}

func TestDenseOfAliases(t *testing.T) {
	vals := []float32{1, 2, 3}
	c, err := DenseOf(vals)
	if err != nil {
		t.Fatal(err)
	}
	if c.Shape() == nil || !c.Shape().Equal(Shape{}) || c.Len() != 3 {
		t.Fatalf("got %d rows of %v, want 3 scalars", c.Len(), c.Shape())
	}
	got, _ := Values[float32](c)
	got[0] = 9
	if vals[0] != 9 {
		t.Errorf("got vals[0] = %v after writing through Values, want 9 (DenseOf aliases)", vals[0])
	}
	if _, err := DenseOf(vals, 2); !errors.Is(err, ErrInvalid) {
		t.Errorf("3 values in rows of 2: got %v, want ErrInvalid", err)
	}
	if _, err := DenseOf([]float32{1}, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("values in rows of shape (0): got %v, want ErrInvalid", err)
	}
	z, err := DenseOf([]float32{}, 0)
	if err != nil || z.Len() != 0 {
		t.Errorf("no values in rows of shape (0): got %v, %v, want 0 rows", z, err)
	}
}

func TestF16FromFloat32(t *testing.T) {
	tests := []struct {
		name string
		in   float32
		want F16
	}{
		{"one", 1, 0x3c00},
		{"minus two", -2, 0xc000},
		{"zero", 0, 0x0000},
		{"negative zero", float32(math.Copysign(0, -1)), 0x8000},
		{"max", 65504, 0x7bff},
		{"below the overflow midpoint", 65519.996, 0x7bff},
		{"overflow midpoint ties to even (up)", 65520, 0x7c00},
		{"overflow", 1e6, 0x7c00},
		{"negative overflow", -1e30, 0xfc00},
		{"+Inf", float32(math.Inf(1)), 0x7c00},
		{"-Inf", float32(math.Inf(-1)), 0xfc00},
		{"tie down to even", 1 + 1.0/2048, 0x3c00},
		{"tie up to even", 1 + 3.0/2048, 0x3c02},
		{"above the tie", 1 + 1.0/2048 + 1.0/(1<<20), 0x3c01},
		{"min normal", 1.0 / (1 << 14), 0x0400},
		{"min subnormal", 1.0 / (1 << 24), 0x0001},
		{"max subnormal", 1023.0 / (1 << 24), 0x03ff},
		{"half the min subnormal ties to zero", 1.0 / (1 << 25), 0x0000},
		{"above half the min subnormal", 1.5 / (1 << 25), 0x0001},
		{"subnormal tie up to even", 3.0 / (1 << 25), 0x0002},
		{"subnormal tie down to even", 5.0 / (1 << 25), 0x0002},
		{"subnormal rounds up into normal", 2047.0 / (1 << 25), 0x0400},
		{"underflow", 1e-10, 0x0000},
		{"negative underflow", -1e-10, 0x8000},
		{"float32 subnormal", math.SmallestNonzeroFloat32, 0x0000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := F16FromFloat32(tt.in); got != tt.want {
				t.Errorf("F16FromFloat32(%g): got %#04x, want %#04x", tt.in, uint16(got), uint16(tt.want))
			}
		})
	}
	t.Run("NaN", func(t *testing.T) {
		for _, b := range []uint32{0x7fc00000, 0xffc00000, 0x7f800001, 0x7fc02000, 0x7fbfffff} {
			h := F16FromFloat32(math.Float32frombits(b))
			if h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
				t.Errorf("F16FromFloat32(%#08x): got %#04x, want a NaN", b, uint16(h))
			}
			if (h&0x8000 != 0) != (b&0x80000000 != 0) {
				t.Errorf("F16FromFloat32(%#08x): got %#04x, want the sign kept", b, uint16(h))
			}
		}
		// The top payload bits of a quiet NaN survive.
		if got := F16FromFloat32(math.Float32frombits(0x7fc02000)); got != 0x7e01 {
			t.Errorf("got %#04x, want 0x7e01", uint16(got))
		}
	})
}

func TestF16Exhaustive(t *testing.T) {
	for b := range 1 << 16 {
		h := F16(b)
		f := h.Float32()
		isNaN := h&0x7c00 == 0x7c00 && h&0x3ff != 0
		if isNaN != math.IsNaN(float64(f)) {
			t.Fatalf("%#04x widens to %g: NaN-ness changed", b, f)
		}
		back := F16FromFloat32(f)
		switch {
		case isNaN && h&0x200 != 0:
			if back != h {
				t.Fatalf("quiet NaN %#04x: got %#04x back, want it unchanged", b, uint16(back))
			}
		case isNaN:
			if back != h|0x200 {
				t.Fatalf("signalling NaN %#04x: got %#04x back, want it quieted", b, uint16(back))
			}
		case back != h:
			t.Fatalf("%#04x -> %g -> %#04x, want exact", b, f, uint16(back))
		}
	}
}

// TestF16Nearest checks the rounding of random float32s against a slow
// reference: the result is a nearest half, and on a tie the even one.
func TestF16Nearest(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		// Exponents around the half range, including subnormals and overflow.
		f := float32(math.Ldexp(r.Float64()+1, r.IntN(50)-30))
		if r.IntN(2) == 0 {
			f = -f
		}
		h := F16FromFloat32(f)
		got := float64(h.Float32())
		if math.IsInf(got, 0) {
			if math.Abs(float64(f)) < 65520 {
				t.Fatalf("%g rounds to Inf, want finite", f)
			}
			continue
		}
		d := math.Abs(got - float64(f))
		for _, nb := range []F16{h - 1, h + 1} {
			if nb&0x7fff >= 0x7c00 || (nb^h)&0x8000 != 0 {
				continue
			}
			nd := math.Abs(float64(nb.Float32()) - float64(f))
			if nd < d || (nd == d && h&1 == 1) {
				t.Fatalf("%g: got %#04x (%g), but %#04x (%g) is nearer or even", f, uint16(h), got, uint16(nb), nb.Float32())
			}
		}
	}
}

func TestBF16(t *testing.T) {
	tests := []struct {
		name string
		in   float32
		want BF16
	}{
		{"one", 1, 0x3f80},
		{"negative zero", float32(math.Copysign(0, -1)), 0x8000},
		{"tie down to even", math.Float32frombits(0x3f808000), 0x3f80},
		{"tie up to even", math.Float32frombits(0x3f818000), 0x3f82},
		{"above the tie", math.Float32frombits(0x3f808001), 0x3f81},
		{"overflow", math.MaxFloat32, 0x7f80},
		{"+Inf", float32(math.Inf(1)), 0x7f80},
		{"-Inf", float32(math.Inf(-1)), 0xff80},
		{"subnormal", math.Float32frombits(0x00010000), 0x0001},
		{"subnormal rounds", math.Float32frombits(0x00018000), 0x0002},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := BF16FromFloat32(tt.in); got != tt.want {
				t.Errorf("BF16FromFloat32(%g): got %#04x, want %#04x", tt.in, uint16(got), uint16(tt.want))
			}
		})
	}
	t.Run("NaN", func(t *testing.T) {
		for _, b := range []uint32{0x7fc00000, 0xff800001, 0x7f800001, 0x7fffffff} {
			h := BF16FromFloat32(math.Float32frombits(b))
			if !math.IsNaN(float64(h.Float32())) {
				t.Errorf("BF16FromFloat32(%#08x): got %#04x, want a NaN", b, uint16(h))
			}
			if (h&0x8000 != 0) != (b&0x80000000 != 0) {
				t.Errorf("BF16FromFloat32(%#08x): got %#04x, want the sign kept", b, uint16(h))
			}
		}
	})
	t.Run("exhaustive", func(t *testing.T) {
		for b := range 1 << 16 {
			h := BF16(b)
			f := h.Float32()
			if math.Float32bits(f) != uint32(b)<<16 {
				t.Fatalf("%#04x widens to %#08x, want %#08x", b, math.Float32bits(f), uint32(b)<<16)
			}
			back := BF16FromFloat32(f)
			if math.IsNaN(float64(f)) {
				if back != h|0x40 {
					t.Fatalf("NaN %#04x: got %#04x back, want it quieted", b, uint16(back))
				}
				continue
			}
			if back != h {
				t.Fatalf("%#04x -> %g -> %#04x, want exact", b, f, uint16(back))
			}
		}
	})
}

func TestMatrixOf(t *testing.T) {
	c, err := MatrixOf([][]int32{{1, 2}, {3, 4}, {5, 6}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind() != Dense || c.Len() != 3 || !c.Shape().Equal(Shape{2}) {
		t.Fatalf("got %v with %d rows of %v, want dense 3 rows of (2)", c.Kind(), c.Len(), c.Shape())
	}
	got, _ := Values[int32](c)
	if diff := cmp.Diff([]int32{1, 2, 3, 4, 5, 6}, got); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	if _, err := MatrixOf([][]int32{{1, 2}, {3}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unequal rows: got %v, want ErrInvalid", err)
	}
	z, err := MatrixOf[float32](nil)
	if err != nil || z.Len() != 0 {
		t.Errorf("no rows: got %v, %v, want 0 rows", z, err)
	}
	e, err := MatrixOf([][]float32{{}, {}})
	if err != nil || e.Len() != 2 || !e.Shape().Equal(Shape{0}) {
		t.Errorf("empty rows: got %v, %v, want 2 rows of (0)", e, err)
	}
}

func TestRaggedOf(t *testing.T) {
	c := RaggedOf([][]int16{{1}, {}, {2, 3, 4}})
	if c.Kind() != Ragged || c.Len() != 3 {
		t.Fatalf("got %v with %d rows, want ragged with 3", c.Kind(), c.Len())
	}
	if diff := cmp.Diff([]Shape{{1}, {0}, {3}}, c.Shapes()); diff != "" {
		t.Errorf("shapes (-want +got):\n%s", diff)
	}
	if c.Shape() != nil {
		t.Errorf("got Shape %v, want nil for a ragged column", c.Shape())
	}
	if diff := cmp.Diff([]int{0, 2, 2, 8}, c.Offsets()); diff != "" {
		t.Errorf("offsets (-want +got):\n%s", diff)
	}
	r, err := Row[int16](c, 1)
	if err != nil || len(r) != 0 {
		t.Errorf("empty row: got %v, %v", r, err)
	}
	if _, ok := c.Uniform(); ok {
		t.Error("got Uniform true, want false")
	}
	// Shapes is a fresh copy.
	c.Shapes()[0][0] = 99
	if !c.RowShape(0).Equal(Shape{1}) {
		t.Errorf("got RowShape %v after changing Shapes(), want (1)", c.RowShape(0))
	}
}

func TestNewRaggedAndOpaque(t *testing.T) {
	if _, err := NewRagged(Float32, []Shape{{2}, {1}}, make([]byte, 12)); err != nil {
		t.Errorf("valid ragged: %v", err)
	}
	bad := []struct {
		name string
		err  error
	}{
		{"short data", func() error { _, err := NewRagged(Float32, []Shape{{2}}, make([]byte, 4)); return err }()},
		{"negative dim", func() error { _, err := NewRagged(Float32, []Shape{{-1}}, nil); return err }()},
		{"bytes dtype", func() error { _, err := NewRagged(Bytes, []Shape{{1}}, make([]byte, 1)); return err }()},
		{"opaque no offsets", func() error { _, err := NewOpaque(nil, nil); return err }()},
		{"opaque offsets short", func() error { _, err := NewOpaque([]int{0, 2}, make([]byte, 3)); return err }()},
		{"opaque offsets decrease", func() error { _, err := NewOpaque([]int{0, 3, 2, 3}, make([]byte, 3)); return err }()},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", tt.err)
			}
		})
	}
	o, err := NewOpaque([]int{0, 1, 1, 3}, []byte("abc"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := o.Strings()
	if diff := cmp.Diff([]string{"a", "", "bc"}, got); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}
}

func TestStringsOf(t *testing.T) {
	long := strings.Repeat("0123456789abcdef", 1024) + "!" // > 16 KiB
	vals := []string{"hello", "", "wörld ✓ 日本語", long, "\x00\xff"}
	c := StringsOf(vals)
	if c.Kind() != Opaque || c.DType() != Bytes || c.Len() != len(vals) {
		t.Fatalf("got %v %v with %d rows, want opaque bytes with %d", c.Kind(), c.DType(), c.Len(), len(vals))
	}
	got, err := c.Strings()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vals, got); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}
	for i, v := range vals {
		if c.String(i) != v {
			t.Errorf("String(%d): got %q, want %q", i, c.String(i), v)
		}
		if !c.RowShape(i).Equal(Shape{len(v)}) {
			t.Errorf("RowShape(%d): got %v, want (%d)", i, c.RowShape(i), len(v))
		}
	}
	tk, err := c.Take([]int{3, 2})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = tk.Strings()
	if diff := cmp.Diff([]string{long, vals[2]}, got); diff != "" {
		t.Errorf("Take (-want +got):\n%s", diff)
	}
	sl, err := c.Slice(2, 4)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = sl.Strings()
	if diff := cmp.Diff(vals[2:4], got); diff != "" {
		t.Errorf("Slice (-want +got):\n%s", diff)
	}
	cat, err := ConcatColumns(sl, c.Clone(), StringsOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	got, _ = cat.Strings()
	if diff := cmp.Diff(append(append([]string{}, vals[2:4]...), vals...), got); diff != "" {
		t.Errorf("Concat (-want +got):\n%s", diff)
	}
	b := BytesOf([][]byte{[]byte("x"), nil, []byte(long)})
	got, _ = b.Strings()
	if diff := cmp.Diff([]string{"x", "", long}, got); diff != "" {
		t.Errorf("BytesOf (-want +got):\n%s", diff)
	}
	if _, err := Values[uint8](c); !errors.Is(err, ErrInvalid) {
		t.Errorf("Values of opaque: got %v, want ErrInvalid", err)
	}
	if _, err := Row[uint8](c, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("Row of opaque: got %v, want ErrInvalid", err)
	}
	if _, ok := c.Uniform(); ok {
		t.Error("Uniform of opaque: got true, want false")
	}
	if c.Densify() != c {
		t.Error("Densify of opaque: got a new column, want the same one")
	}
	d, _ := DenseOf([]float32{1})
	if _, err := d.Strings(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Strings of dense: got %v, want ErrInvalid", err)
	}
}

func TestUniformAndDensify(t *testing.T) {
	uni := RaggedOf([][]float32{{1, 2}, {3, 4}})
	s, ok := uni.Uniform()
	if !ok || !s.Equal(Shape{2}) {
		t.Errorf("Uniform: got %v, %v, want (2), true", s, ok)
	}
	d := uni.Densify()
	if d.Kind() != Dense || !d.Shape().Equal(Shape{2}) || d.Len() != 2 {
		t.Errorf("Densify: got %v %d rows of %v, want dense 2 rows of (2)", d.Kind(), d.Len(), d.Shape())
	}
	if &d.Data()[0] != &uni.Data()[0] {
		t.Error("Densify copied the bytes, want them aliased")
	}
	if !d.Equal(uni) || !uni.Equal(d) {
		t.Error("dense and ragged columns with the same rows: got unequal")
	}

	non := RaggedOf([][]float32{{1}, {2, 3}})
	if _, ok := non.Uniform(); ok {
		t.Error("Uniform of unequal rows: got true")
	}
	if non.Densify() != non {
		t.Error("Densify of unequal rows: got a new column, want the same one")
	}
	empty := RaggedOf[float32](nil)
	if _, ok := empty.Uniform(); ok {
		t.Error("Uniform of no rows: got true, want false")
	}
	if empty.Densify() != empty {
		t.Error("Densify of no rows: got a new column")
	}
	dense, _ := DenseOf([]int8{1, 2, 3, 4}, 2)
	if s, ok := dense.Uniform(); !ok || !s.Equal(Shape{2}) {
		t.Errorf("Uniform of dense: got %v, %v", s, ok)
	}
	if dense.Densify() != dense {
		t.Error("Densify of dense: got a new column")
	}
}

func TestConcatColumns(t *testing.T) {
	d2a, _ := DenseOf([]float32{1, 2, 3, 4}, 2)
	d2b, _ := DenseOf([]float32{5, 6}, 2)
	d3, _ := DenseOf([]float32{7, 8, 9}, 3)
	d2z, _ := DenseOf([]float32{}, 2)
	d3z, _ := DenseOf([]float32{}, 3)
	i2, _ := DenseOf([]int32{1, 2}, 2)
	r := RaggedOf([][]float32{{1}, {2, 3, 4}})
	ru := RaggedOf([][]float32{{5, 6}})

	tests := []struct {
		name       string
		in         []*Column
		wantKind   Kind
		wantShapes []Shape
		wantVals   []float32
	}{
		{"dense same shape", []*Column{d2a, d2b}, Dense, []Shape{{2}, {2}, {2}}, []float32{1, 2, 3, 4, 5, 6}},
		{"dense different shapes", []*Column{d2b, d3}, Ragged, []Shape{{2}, {3}}, []float32{5, 6, 7, 8, 9}},
		{"dense and ragged", []*Column{d2b, r}, Ragged, []Shape{{2}, {1}, {3}}, []float32{5, 6, 1, 2, 3, 4}},
		{"dense and uniform ragged", []*Column{d2a, ru}, Dense, []Shape{{2}, {2}, {2}}, []float32{1, 2, 3, 4, 5, 6}},
		{"one column", []*Column{d3}, Dense, []Shape{{3}}, []float32{7, 8, 9}},
		{"dense with no rows", []*Column{d2z, d2z}, Dense, []Shape{}, []float32{}},
		{"empty dense of another shape", []*Column{d3z, d2b}, Dense, []Shape{{2}}, []float32{5, 6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ConcatColumns(tt.in...)
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind() != tt.wantKind {
				t.Errorf("kind: got %v, want %v", c.Kind(), tt.wantKind)
			}
			if diff := cmp.Diff(tt.wantShapes, c.Shapes()); diff != "" {
				t.Errorf("shapes (-want +got):\n%s", diff)
			}
			got, err := Values[float32](c)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantVals, got); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}
			if len(tt.in[0].Data()) > 0 && &c.Data()[0] == &tt.in[0].Data()[0] {
				t.Error("result aliases its first input, want fresh bytes")
			}
		})
	}
	errs := []struct {
		name string
		in   []*Column
		want error
	}{
		{"no columns", nil, ErrInvalid},
		{"dtype mismatch", []*Column{d2a, i2}, ErrDTypeMismatch},
		{"dense and opaque", []*Column{d2a, StringsOf([]string{"x"})}, ErrDTypeMismatch},
		{"opaque and dense", []*Column{StringsOf([]string{"x"}), i2}, ErrDTypeMismatch},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ConcatColumns(tt.in...); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewDense(t *testing.T) {
	tests := []struct {
		name  string
		dt    DType
		rows  int
		shape Shape
		n     int
		ok    bool
	}{
		{"scalars", Float32, 3, nil, 12, true},
		{"matrix rows", Int16, 2, Shape{2, 3}, 24, true},
		{"zero rows", Float64, 0, Shape{4}, 0, true},
		{"zero-size rows", Float64, 5, Shape{0}, 0, true},
		{"short", Float32, 3, nil, 11, false},
		{"long", Float32, 3, nil, 13, false},
		{"negative rows", Float32, -1, nil, 0, false},
		{"negative dim", Float32, 1, Shape{-2}, 0, false},
		{"invalid dtype", InvalidDType, 1, nil, 1, false},
		{"bytes dtype", Bytes, 1, nil, 1, false},
		{"unknown dtype", DType(99), 1, nil, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewDense(tt.dt, tt.rows, tt.shape, make([]byte, tt.n))
			if !tt.ok {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("got %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Len() != tt.rows || c.Size() != tt.n {
				t.Errorf("got %d rows, %d bytes, want %d, %d", c.Len(), c.Size(), tt.rows, tt.n)
			}
		})
	}
	// The row shape is copied.
	s := Shape{2}
	c, _ := NewDense(Uint8, 1, s, make([]byte, 2))
	s[0] = 7
	if !c.Shape().Equal(Shape{2}) {
		t.Errorf("got shape %v after changing the argument, want (2)", c.Shape())
	}
}

func TestValuesWrongType(t *testing.T) {
	c, _ := DenseOf([]float32{1, 2})
	if _, err := Values[float64](c); !errors.Is(err, ErrDTypeMismatch) {
		t.Errorf("Values[float64] of float32: got %v, want ErrDTypeMismatch", err)
	}
	if _, err := Values[F16](c); !errors.Is(err, ErrDTypeMismatch) {
		t.Errorf("Values[F16] of float32: got %v, want ErrDTypeMismatch", err)
	}
	if _, err := Row[int32](c, 0); !errors.Is(err, ErrDTypeMismatch) {
		t.Errorf("Row[int32] of float32: got %v, want ErrDTypeMismatch", err)
	}
	got, err := Values[Score](c)
	if err != nil || len(got) != 2 || got[1] != 2 {
		t.Errorf("Values[Score] of float32: got %v, %v, want [1 2]", got, err)
	}
	for _, i := range []int{-1, 2} {
		if _, err := Row[float32](c, i); !errors.Is(err, ErrInvalid) {
			t.Errorf("Row(%d) of 2: got %v, want ErrInvalid", i, err)
		}
	}
}

func TestColumnRanges(t *testing.T) {
	c, _ := DenseOf([]int64{1, 2, 3})
	for _, rows := range [][]int{{3}, {-1}, {0, 5}} {
		if _, err := c.Take(rows); !errors.Is(err, ErrInvalid) {
			t.Errorf("Take(%v): got %v, want ErrInvalid", rows, err)
		}
	}
	for _, r := range [][2]int{{-1, 1}, {0, 4}, {2, 1}} {
		if _, err := c.Slice(r[0], r[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("Slice(%d, %d): got %v, want ErrInvalid", r[0], r[1], err)
		}
	}
}

func TestZeroRows(t *testing.T) {
	cols := map[string]*Column{
		"dense":  func() *Column { c, _ := DenseOf([]float32{}, 4); return c }(),
		"ragged": RaggedOf[int8](nil),
		"opaque": StringsOf(nil),
	}
	for name, c := range cols {
		t.Run(name, func(t *testing.T) {
			if c.Len() != 0 || c.Size() != 0 {
				t.Fatalf("got %d rows, %d bytes, want none", c.Len(), c.Size())
			}
			if got := c.Offsets(); len(got) != 1 || got[0] != 0 {
				t.Errorf("Offsets: got %v, want [0]", got)
			}
			tk, err := c.Take(nil)
			if err != nil || tk.Len() != 0 || tk.Kind() != c.Kind() {
				t.Errorf("Take(nil): got %v, %v", tk, err)
			}
			sl, err := c.Slice(0, 0)
			if err != nil || sl.Len() != 0 {
				t.Errorf("Slice(0, 0): got %v, %v", sl, err)
			}
			if cl := c.Clone(); cl.Len() != 0 || !cl.Equal(c) {
				t.Errorf("Clone: got %d rows", cl.Len())
			}
			cat, err := ConcatColumns(c, c)
			if err != nil || cat.Len() != 0 || cat.Kind() != c.Kind() {
				t.Errorf("Concat: got %v, %v, want %v with no rows", cat, err, c.Kind())
			}
			if len(c.Shapes()) != 0 {
				t.Errorf("Shapes: got %v, want none", c.Shapes())
			}
		})
	}
	f, _ := DenseOf([]float32{})
	v, err := Values[float32](f)
	if err != nil || len(v) != 0 {
		t.Errorf("Values of no rows: got %v, %v", v, err)
	}
}

func TestColumnEqual(t *testing.T) {
	a, _ := DenseOf([]float32{1, 2, 3, 4}, 2)
	b := RaggedOf([][]float32{{1, 2}, {3, 4}})
	c := RaggedOf([][]float32{{1, 2, 3}, {4}})
	d, _ := DenseOf([]int32{1, 2, 3, 4}, 2)
	nan1, _ := DenseOf([]float64{math.Float64frombits(0x7ff8000000000001)})
	nan2, _ := DenseOf([]float64{math.Float64frombits(0x7ff8000000000002)})
	tests := []struct {
		name string
		x, y *Column
		want bool
	}{
		{"dense and same ragged", a, b, true},
		{"same bytes other shapes", a, c, false},
		{"other dtype", a, d, false},
		{"itself", nan1, nan1, true},
		{"NaN payloads differ", nan1, nan2, false},
		{"opaque vs dense", StringsOf([]string{"ab"}), a, false},
		{"opaque rows split differently", StringsOf([]string{"a", "bc"}), StringsOf([]string{"ab", "c"}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.x.Equal(tt.y); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCloneIsolation(t *testing.T) {
	r := RaggedOf([][]uint8{{1}, {2, 3}})
	cl := r.Clone()
	cl.Data()[0] = 9
	cl.shapes[0][0] = 5
	if r.Data()[0] != 1 || !r.RowShape(0).Equal(Shape{1}) {
		t.Errorf("changing a clone changed its source: data %v, shape %v", r.Data(), r.RowShape(0))
	}
	if !bytes.Equal(r.Data(), []byte{1, 2, 3}) {
		t.Errorf("got %v, want [1 2 3]", r.Data())
	}
}

func TestShape(t *testing.T) {
	if got := (Shape{2, 3, 4}).NumElems(); got != 24 {
		t.Errorf("NumElems: got %d, want 24", got)
	}
	if got := (Shape{}).NumElems(); got != 1 {
		t.Errorf("NumElems of a scalar: got %d, want 1", got)
	}
	if got := (Shape{2, 3}).String(); got != "(2,3)" {
		t.Errorf("String: got %q, want (2,3)", got)
	}
	if Shape(nil).Clone() != nil {
		t.Error("Clone of nil: got non-nil")
	}
	if err := (Shape{1, -1}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Validate: got %v, want ErrInvalid", err)
	}
}
