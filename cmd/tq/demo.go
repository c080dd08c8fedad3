package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// demo runs the KV example of the reference's KV-interface change on an
// embedded cluster and prints each step.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	units := fs.Int("units", 2, "storage units to start")
	capacity := byteSize(256 << 20)
	fs.Var(&capacity, "capacity", "bytes per storage unit (e.g. 512MiB, 4GiB)")
	partition := fs.String("partition", "test", "partition to use")
	streamDemo := fs.Bool("stream", false, "run the streaming-loader demo instead: tq serve, a producer and 2 DP groups × 2 trainer ranks, each its own process")
	streamRole := fs.String("stream-role", "", "(internal) run as a worker of --stream: producer or rank")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo takes no arguments, got %q", fs.Args())
	}
	if *units < 1 {
		return fmt.Errorf("--units %d: need at least one", *units)
	}
	if *streamRole != "" {
		return demoWorker(ctx, *streamRole, stdout)
	}
	if *streamDemo {
		// Its processes are sized on their own: the KV demo's flags
		// would be ignored, so they are refused.
		var set []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "units" || f.Name == "capacity" || f.Name == "partition" {
				set = append(set, "--"+f.Name)
			}
		})
		if len(set) > 0 {
			return fmt.Errorf("demo --stream takes none of %s (they size the KV demo)", strings.Join(set, ", "))
		}
		return demoStream(ctx, stdout, stderr)
	}
	if err := checkDemoFlags(int64(capacity), *partition); err != nil {
		return err
	}
	cfg := embedded.DefaultConfig()
	cfg.Units = *units
	cfg.Storage.Capacity = int64(capacity)
	e, err := embedded.New(cfg)
	if err != nil {
		// Too small a capacity, say, which the storage unit judges.
		return fmt.Errorf("demo --units %d --capacity %d bytes: %w", *units, int64(capacity), err)
	}
	defer e.Close()
	kv := kvapi.New(e.Client)
	p := *partition
	out := &printer{w: stdout}

	out.title("TQ demo: embedded cluster — 1 controller, %d storage units of %s each, %s placement",
		len(e.Units), capacity, cfg.Client.Placement)

	// 1. Batch put four keys with two fields and tags.
	ids, err := engine.DenseOf([]int64{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 3)
	if err != nil {
		return err
	}
	mask, err := engine.DenseOf([]int64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 3)
	if err != nil {
		return err
	}
	batch, err := engine.NewBatch(engine.Field{Name: "input_ids", Col: ids}, engine.Field{Name: "attention_mask", Col: mask})
	if err != nil {
		return err
	}
	keys := []string{"1_0", "1_1", "1_2", "2_0"}
	tags := make([]engine.Tags, len(keys))
	for i := range tags {
		tags[i] = engine.Tags{"global_steps": 1, "status": "running", "model_version": 1}
	}
	meta, err := kv.BatchPut(ctx, p, keys, batch, tags)
	if err != nil {
		return err
	}
	out.step("batch put: %d keys into partition %q, fields %s", len(meta.Keys), p, describe(batch))

	// 2. List keys and tags.
	list, err := kv.List(ctx, p)
	if err != nil {
		return err
	}
	out.step("list partition %q: %d keys", p, len(list[p]))
	out.table([]string{"key", "tags"}, func(row func(...string)) {
		for _, en := range list[p] {
			row(en.Key, tagString(en.Tags))
		}
	})

	// 3. Get everything back.
	var all []string
	for _, en := range list[p] {
		all = append(all, en.Key)
	}
	got, err := kv.BatchGet(ctx, p, all)
	if err != nil {
		return err
	}
	defer got.Release() // views when the unit is reached over shared memory
	out.step("batch get: every field of %d keys", got.Rows())
	if err := out.batch(all, got); err != nil {
		return err
	}
	if !got.Col("input_ids").Equal(ids) || !got.Col("attention_mask").Equal(mask) {
		return fmt.Errorf("batch get returned different data than was put")
	}

	// 4. Update one field of one key, and its tag.
	newIDs, err := engine.DenseOf([]int64{40, 50, 60}, 3)
	if err != nil {
		return err
	}
	upd, err := engine.NewBatch(engine.Field{Name: "input_ids", Col: newIDs})
	if err != nil {
		return err
	}
	m, err := kv.Put(ctx, p, "1_1", upd, engine.Tags{"status": "done", "reward": 0.75})
	if err != nil {
		return err
	}
	out.step("put key 1_1: input_ids = [40 50 60], tag += {status: done, reward: 0.75}")
	out.note("1_1 now has tags %s and fields %s", tagString(m.Tags[0]), strings.Join(m.Fields, ", "))

	// 5. Get a field selection.
	sel := []string{"1_0", "1_1"}
	part, err := kv.BatchGet(ctx, p, sel, "input_ids")
	if err != nil {
		return err
	}
	defer part.Release()
	out.step("batch get: input_ids of %s", strings.Join(sel, ", "))
	if err := out.batch(sel, part); err != nil {
		return err
	}

	// 6. Clear.
	if err := kv.Clear(ctx, p, all); err != nil {
		return err
	}
	left, err := kv.List(ctx, p)
	if err != nil {
		return err
	}
	var usedBytes int64
	for _, u := range e.Units {
		usedBytes += u.Stats().Used
	}
	out.step("clear %d keys: partition %q holds %d keys, storage holds %s", len(all), p, len(left[p]), bytesString(usedBytes))
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout, "done.")
	return nil
}

// checkDemoFlags refuses a --capacity or a --partition that the cluster
// would refuse, naming the flag, before it starts: else the error came
// from deep inside ("batch put: empty partition id", after the title)
// without a word of the flag.
func checkDemoFlags(capacity int64, partition string) error {
	if capacity <= 0 {
		return fmt.Errorf("--capacity %d bytes: must be positive", capacity)
	}
	switch {
	case partition == "":
		return errors.New(`--partition "": empty partition name`)
	case !utf8.ValidString(partition):
		return fmt.Errorf("--partition %q: partition %q is not valid UTF-8", partition, partition)
	}
	if err := engine.CheckNameSize("partition", partition); err != nil {
		return fmt.Errorf("--partition: %w", err)
	}
	return nil
}

type printer struct {
	w io.Writer
	n int
}

func (p *printer) title(format string, args ...any) {
	fmt.Fprintf(p.w, format+"\n", args...)
}

func (p *printer) step(format string, args ...any) {
	p.n++
	fmt.Fprintf(p.w, "\n%d. "+format+"\n", append([]any{p.n}, args...)...)
}

func (p *printer) note(format string, args ...any) {
	fmt.Fprintf(p.w, "   "+format+"\n", args...)
}

func (p *printer) table(header []string, fill func(row func(...string))) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "   "+strings.Join(header, "\t"))
	fill(func(cells ...string) { fmt.Fprintln(tw, "   "+strings.Join(cells, "\t")) })
	tw.Flush()
}

func (p *printer) batch(keys []string, b *engine.Batch) error {
	var err error
	p.table(append([]string{"key"}, b.Names()...), func(row func(...string)) {
		for i, k := range keys {
			cells := []string{k}
			for _, f := range b.Fields() {
				s, e := cellString(f.Col, i)
				if e != nil {
					err = e
				}
				cells = append(cells, s)
			}
			row(cells...)
		}
	})
	return err
}

// cellString prints row i of c: numbers as Go prints them, the 16- and
// 8-bit floats widened to float32, byte strings quoted.
func cellString(c *engine.Column, i int) (string, error) {
	switch c.DType() {
	case engine.Float64:
		return rowString[float64](c, i)
	case engine.Float32:
		return rowString[float32](c, i)
	case engine.Float16:
		return floatRowString[engine.F16](c, i)
	case engine.BFloat16:
		return floatRowString[engine.BF16](c, i)
	case engine.Float8E4M3FN:
		return floatRowString[engine.F8E4M3FN](c, i)
	case engine.Float8E5M2:
		return floatRowString[engine.F8E5M2](c, i)
	case engine.Int64:
		return rowString[int64](c, i)
	case engine.Int32:
		return rowString[int32](c, i)
	case engine.Int16:
		return rowString[int16](c, i)
	case engine.Int8:
		return rowString[int8](c, i)
	case engine.Uint64:
		return rowString[uint64](c, i)
	case engine.Uint32:
		return rowString[uint32](c, i)
	case engine.Uint16:
		return rowString[uint16](c, i)
	case engine.Uint8:
		return rowString[uint8](c, i)
	case engine.Bool:
		return rowString[bool](c, i)
	case engine.Complex64:
		return rowString[complex64](c, i)
	case engine.Complex128:
		return rowString[complex128](c, i)
	case engine.Bytes:
		return fmt.Sprintf("%q", c.String(i)), nil
	}
	return fmt.Sprintf("<%v %v>", c.DType(), c.RowShape(i)), nil
}

func rowString[T engine.Elem](c *engine.Column, i int) (string, error) {
	v, err := engine.Row[T](c, i)
	return fmt.Sprint(v), err
}

// floatRowString prints a row of float bit patterns as float32s.
func floatRowString[T interface {
	engine.Elem
	Float32() float32
}](c *engine.Column, i int) (string, error) {
	v, err := engine.Row[T](c, i)
	if err != nil {
		return "", err
	}
	f := make([]float32, len(v))
	for j, x := range v {
		f[j] = x.Float32()
	}
	return fmt.Sprint(f), nil
}

func describe(b *engine.Batch) string {
	var parts []string
	for _, f := range b.Fields() {
		parts = append(parts, fmt.Sprintf("%s %v%v", f.Name, f.Col.DType(), f.Col.RowShape(0)))
	}
	return strings.Join(parts, ", ")
}

func tagString(t engine.Tags) string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, t[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func bytesString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
