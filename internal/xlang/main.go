// Command tqxlang is the Go side of the Python client's cross-language
// tests (python/tests/test_xlang.py): it writes a batch holding every
// dtype TQ has, with the awkward bit patterns first (NaN payloads, ±Inf,
// −0, integer extremes), and checks one written by the Python client
// byte for byte. Both sides build the same batch from the recipe below,
// which python/tests/xlang.py repeats.
//
//	tqxlang put   ADDR PARTITION TRANSPORT ROWS   write keys k0..k{ROWS-1}
//	tqxlang check ADDR PARTITION TRANSPORT ROWS   read them and compare
//	tqxlang bench ADDR PARTITION TRANSPORT ITERS  the Go client's side of python3 -m tq.bench
//
// TRANSPORT is "tcp" or "shm". A few rows go through the controller in one
// round trip (KV_PUT, KV_GET); a few thousand go through the units. The token is found as every client finds
// it ($TQ_TOKEN, else the data directory's token file).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// Per-row elements of every dense field; ragged row r has
// raggedLens[r%3] elements.
const elems = 5

var raggedLens = []int{0, 2, 7}

// specials are the bit patterns each dtype's bytes start with.
var specials = map[string][]uint64{
	"float64":       {0x7ff8000000000001, 0xfff4000000000000, 0x7ff0000000000000, 0xfff0000000000000, 0x8000000000000000, 0x0000000000000001},
	"float32":       {0x7fc00001, 0xffa00000, 0x7f800000, 0xff800000, 0x80000000, 0x00000001},
	"float16":       {0x7e01, 0xfd00, 0x7c00, 0xfc00, 0x8000, 0x0001},
	"bfloat16":      {0x7fc1, 0xff81, 0x7f80, 0xff80, 0x8000, 0x0001},
	"float8_e4m3fn": {0x7f, 0xff, 0x80, 0x7e, 0x01},
	"float8_e5m2":   {0x7c, 0xfc, 0x7d, 0xfe, 0x80, 0x01},
	"complex64":     {0x7fc00001, 0xff800000, 0x80000000, 0x7f800000},
	"complex128":    {0x7ff8000000000001, 0xfff0000000000000, 0x8000000000000000, 0x7ff0000000000000},
	"int64":         {0x8000000000000000, 0x7fffffffffffffff, 0xffffffffffffffff},
	"int32":         {0x80000000, 0x7fffffff, 0xffffffff},
	"int16":         {0x8000, 0x7fff, 0xffff},
	"int8":          {0x80, 0x7f, 0xff},
	"uint64":        {0xffffffffffffffff, 0x8000000000000000},
	"uint32":        {0xffffffff, 0x80000000},
	"uint16":        {0xffff, 0x8000},
	"uint8":         {0xff, 0x80},
	"bool":          {1, 0, 1},
}

// dtypes in the order fields are built.
var dtypes = []string{"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "complex64",
	"complex128", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"}

// fill returns n elements of dtype dt (of size word bytes, a complex's
// part size for complex dtypes): the specials, then a counter-driven
// pattern (seed salts it per field).
func fill(dt string, nbytes int, seed uint32) []byte {
	word := map[string]int{"complex64": 4, "complex128": 8}[dt]
	d, _ := engine.ParseDType(dt)
	if word == 0 {
		word = d.Size()
	}
	b := make([]byte, 0, nbytes)
	x := seed*2654435761 + 12345
	for i := 0; len(b) < nbytes; i++ {
		var v uint64
		if sp := specials[dt]; i < len(sp) {
			v = sp[i]
		} else {
			x = x*1103515245 + 12345
			v = uint64(x>>8) | uint64(x)<<24 | uint64(x)<<48
			if dt == "bool" {
				v &= 1
			}
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], v)
		b = append(b, w[:word]...)
	}
	return b[:nbytes]
}

func batch(rows int) (*engine.Batch, error) {
	var fields []engine.Field
	for i, dt := range dtypes {
		d, err := engine.ParseDType(dt)
		if err != nil {
			return nil, err
		}
		col, err := engine.NewDense(d, rows, engine.Shape{elems}, fill(dt, rows*elems*d.Size(), uint32(i)))
		if err != nil {
			return nil, fmt.Errorf("dense %s: %w", dt, err)
		}
		fields = append(fields, engine.Field{Name: "d_" + dt, Col: col})
	}
	for i, dt := range []string{"float32", "bfloat16", "int64"} {
		d, _ := engine.ParseDType(dt)
		shapes := make([]engine.Shape, rows)
		n := 0
		for r := range rows {
			l := raggedLens[r%len(raggedLens)]
			shapes[r] = engine.Shape{l}
			n += l
		}
		col, err := engine.NewRagged(d, shapes, fill(dt, n*d.Size(), uint32(100+i)))
		if err != nil {
			return nil, fmt.Errorf("ragged %s: %w", dt, err)
		}
		fields = append(fields, engine.Field{Name: "r_" + dt, Col: col})
	}
	op := make([][]byte, rows)
	for r := range rows {
		op[r] = [][]byte{[]byte(""), []byte("héllo"), {0, 1, 2, 0xff, 0xfe}}[r%3]
	}
	fields = append(fields, engine.Field{Name: "o_bytes", Col: engine.BytesOf(op)})
	return engine.NewBatch(fields...)
}

func run(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("usage: tqxlang put|check ADDR PARTITION TRANSPORT ROWS")
	}
	rows, err := strconv.Atoi(args[4])
	if err != nil || rows < 1 {
		return fmt.Errorf("rows (or iterations) %q: want a positive count", args[4])
	}
	keys := make([]string, rows)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, args[1], client.ConnectConfig{Name: "tqxlang", Transport: args[3]})
	if err != nil {
		return err
	}
	defer c.Close()
	kv := kvapi.New(c)
	if args[0] == "bench" {
		return bench(ctx, kv, args[2], rows)
	}
	want, err := batch(rows)
	if err != nil {
		return err
	}
	switch args[0] {
	case "put":
		_, err := kv.BatchPut(ctx, args[2], keys, want, nil)
		return err
	case "check":
		got, err := kv.BatchGet(ctx, args[2], keys)
		if err != nil {
			return err
		}
		for _, f := range want.Fields() {
			g := got.Col(f.Name)
			if g == nil {
				return fmt.Errorf("field %s missing", f.Name)
			}
			if g.DType() != f.Col.DType() || g.Kind() != f.Col.Kind() {
				return fmt.Errorf("field %s: got %v %v, want %v %v", f.Name, g.Kind(), g.DType(), f.Col.Kind(), f.Col.DType())
			}
			for r := range rows {
				if !g.RowShape(r).Equal(f.Col.RowShape(r)) {
					return fmt.Errorf("field %s row %d: shape %v, want %v", f.Name, r, g.RowShape(r), f.Col.RowShape(r))
				}
			}
			if !bytes.Equal(g.Data(), f.Col.Data()) {
				return fmt.Errorf("field %s: bytes differ:\n got %x\nwant %x", f.Name, g.Data(), f.Col.Data())
			}
		}
		if len(got.Fields()) != len(want.Fields()) {
			return fmt.Errorf("got %d fields, want %d", len(got.Fields()), len(want.Fields()))
		}
		fmt.Println("ok")
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tqxlang:", err)
		os.Exit(1)
	}
}

// The reference small workload: 1024 keys, 9 float32 fields of 8192
// values per row (288 MiB), as bench.Small and python3 -m tq.bench.
const (
	benchRows   = 1024
	benchFields = 9
	benchSeq    = 8192
)

// bench times the Go client's put, get (BatchGetCopy: fresh memory, as
// Python's kv_batch_get), get into a reused
// buffer and get of views of the small workload, iters times each, and
// prints each op's seconds per iteration as one JSON object.
func bench(ctx context.Context, kv *kvapi.KV, partition string, iters int) error {
	keys := make([]string, benchRows)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	var fields []engine.Field
	for f := range benchFields {
		data := make([]byte, benchRows*benchSeq*4)
		for i := 0; i < len(data); i += 4 {
			binary.LittleEndian.PutUint32(data[i:], uint32(i*31+f))
		}
		col, err := engine.NewDense(engine.Float32, benchRows, engine.Shape{benchSeq}, data)
		if err != nil {
			return err
		}
		fields = append(fields, engine.Field{Name: "f" + strconv.Itoa(f), Col: col})
	}
	b, err := engine.NewBatch(fields...)
	if err != nil {
		return err
	}
	if _, err := kv.BatchPut(ctx, partition, keys, b, nil); err != nil { // warm up
		return err
	}
	size, err := kv.SizeOf(ctx, partition, keys)
	if err != nil {
		return err
	}
	into := make([]byte, size)
	// Warm up the reused buffer (its pages) and the view path, as Python's
	// side does, so that a single iteration measures the steady state.
	if _, err := kv.BatchGetInto(ctx, partition, keys, into); err != nil {
		return err
	}
	if v, err := kv.BatchGetView(ctx, partition, keys); err == nil {
		v.Release()
	} else {
		return err
	}
	out := map[string][]float64{}
	timeIt := func(op string, f func() error) error {
		start := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		out[op] = append(out[op], time.Since(start).Seconds())
		return nil
	}
	for range iters {
		if err := kv.Clear(ctx, partition, keys); err != nil {
			return err
		}
		if err := timeIt("put", func() error { _, err := kv.BatchPut(ctx, partition, keys, b, nil); return err }); err != nil {
			return err
		}
		if err := timeIt("get", func() error { _, err := kv.BatchGetCopy(ctx, partition, keys); return err }); err != nil {
			return err
		}
		if err := timeIt("get_into", func() error { _, err := kv.BatchGetInto(ctx, partition, keys, into); return err }); err != nil {
			return err
		}
		if err := timeIt("get_view", func() error {
			v, err := kv.BatchGetView(ctx, partition, keys)
			if err == nil {
				v.Release()
			}
			return err
		}); err != nil {
			return err
		}
	}
	enc, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(enc))
	return kv.Clear(ctx, partition, keys)
}
