package main

// `tq bench`: the reference flow (bench.Run) over the chosen transports,
// workloads and cases, printed as a table (default), JSON lines or CSV,
// and optionally drawn (--plot) and written up (--markdown).

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/bench"
)

// benchConfig is what the flags of `tq bench` ask for.
type benchConfig struct {
	transports []string
	workloads  []bench.Workload
	cases      []string
	iters      int
	warmup     int
	format     string // table, json or csv
	plot       string // PNG path
	markdown   string // Markdown path
	log        string // the controller's metadata log: off, batch, always, never
	progress   bool   // a line per step even when stderr is not a terminal
}

const benchUsage = `usage: tq bench [flags]

Runs the reference flow between a writer and a reader process — batch put,
list, batch get, batch get into caller memory, clear — with a controller
and a storage unit in this process, next to baselines between the same two
processes: copy() of the same bytes, a plain TCP stream and a plain unix
stream. Bandwidths are GB/s (1e9 bytes/s), medians over the iterations.

Flags:
`

func parseBenchFlags(args []string, stderr io.Writer) (benchConfig, error) {
	var cfg benchConfig
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), benchUsage)
		fs.PrintDefaults()
	}
	transport := fs.String("transport", "all", "shm, tcp, unix (TQ's stream transport over a unix socket), rdma or all; or a comma-separated list")
	workload := fs.String("workload", "small", "small (1024×9×8192 float32, 288 MiB), medium (2048×8×32768, 2 GiB) or all; or a list (tiny: a few KiB, to check the harness)")
	cs := fs.String("case", "all", "simple (all dense float32), complex (dense, ragged and string thirds) or all; or a list")
	fs.IntVar(&cfg.iters, "iters", 3, "timed iterations per result")
	fs.IntVar(&cfg.warmup, "warmup", 1, "untimed iterations before them")
	fs.StringVar(&cfg.log, "log", "off", "the controller's metadata log: off (in memory), or batch, always or never as tq serve --fsync (a durable log in a temporary directory)")
	asJSON := fs.Bool("json", false, "print one JSON object per result and line instead of the table")
	asCSV := fs.Bool("csv", false, "print CSV instead of the table")
	fs.StringVar(&cfg.plot, "plot", "", "draw the results as grouped bars into this PNG file")
	fs.StringVar(&cfg.markdown, "markdown", "", "write the results, the command and the machine into this Markdown file")
	fs.BoolVar(&cfg.progress, "progress", false, "print a progress line per step when stderr is not a terminal (on a terminal a bar is always drawn)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if err := refuseRepeats(fs, args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("bench takes no arguments, got %q", fs.Args())
	}
	var err error
	if cfg.transports, err = listFlag("--transport", *transport, bench.Transports, func(s string) string { return s }); err != nil {
		return cfg, err
	}
	if cfg.workloads, err = listFlag("--workload", *workload, bench.Workloads, func(w bench.Workload) string { return w.Name }); err != nil {
		return cfg, err
	}
	if cfg.cases, err = listFlag("--case", *cs, bench.Cases, func(s string) string { return s }); err != nil {
		return cfg, err
	}
	switch {
	case cfg.iters < 1:
		return cfg, fmt.Errorf("--iters %d: need at least one", cfg.iters)
	case cfg.warmup < 0:
		return cfg, fmt.Errorf("--warmup %d is negative", cfg.warmup)
	case *asJSON && *asCSV:
		return cfg, errors.New("--json and --csv: choose one")
	case !slices.Contains([]string{"off", "batch", "always", "never"}, cfg.log):
		return cfg, fmt.Errorf("--log %q: want off, batch, always or never", cfg.log)
	case cfg.plot != "" && filepath.Ext(cfg.plot) != ".png":
		// Known before the benchmark runs (see plotResults).
		return cfg, fmt.Errorf("--plot %q: only .png is supported", cfg.plot)
	}
	cfg.format = "table"
	if *asJSON {
		cfg.format = "json"
	}
	if *asCSV {
		cfg.format = "csv"
	}
	return cfg, nil
}

// checkBenchOutputs refuses, before the benchmark runs (minutes with
// --workload medium), a --plot or --markdown file that could not be
// written at its end: one in a directory that is not there or not
// writable, one that is a directory, or the two flags naming one file
// (the Markdown would overwrite the chart). Nothing is created.
func checkBenchOutputs(cfg benchConfig) error {
	if cfg.plot != "" && cfg.markdown != "" && filepath.Clean(cfg.plot) == filepath.Clean(cfg.markdown) {
		return fmt.Errorf("--plot and --markdown name the same file, %q: the Markdown would overwrite the chart", cfg.plot)
	}
	for _, f := range []struct{ flag, path string }{{"--plot", cfg.plot}, {"--markdown", cfg.markdown}} {
		if f.path == "" {
			continue
		}
		if fi, err := os.Stat(f.path); err == nil && fi.IsDir() {
			return fmt.Errorf("%s %q: is a directory: want a file to write", f.flag, f.path)
		}
		dir := filepath.Dir(f.path)
		fi, err := os.Stat(dir)
		switch {
		case err != nil:
			return fmt.Errorf("%s %q: directory %s: %w", f.flag, f.path, dir, errors.Unwrap(err))
		case !fi.IsDir():
			return fmt.Errorf("%s %q: %s is not a directory", f.flag, f.path, dir)
		}
		if err := unix.Access(dir, unix.W_OK); err != nil {
			return fmt.Errorf("%s %q: directory %s is not writable: %w", f.flag, f.path, dir, err)
		}
	}
	return nil
}

// listFlag expands a comma-separated value v of flagName ("shm,tcp"), each
// item through lookup ("all" expands to several), dropping repeats. An
// error names the flag and its value, then the item refused.
func listFlag[T any](flagName, v string, lookup func(string) ([]T, error), name func(T) string) ([]T, error) {
	var out []T
	seen := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		got, err := lookup(strings.TrimSpace(item))
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flagName, v, err)
		}
		for _, x := range got {
			if !seen[name(x)] {
				seen[name(x)] = true
				out = append(out, x)
			}
		}
	}
	return out, nil
}

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var flagOut bytes.Buffer
	cfg, err := parseBenchFlags(args, &flagOut)
	if err = flagOutputTo(flagOut.Bytes(), err, stdout, stderr); err != nil {
		return err
	}
	if err := checkBenchOutputs(cfg); err != nil {
		return err
	}
	for _, tr := range cfg.transports {
		if err := bench.Available(tr); err != nil {
			fmt.Fprintf(stderr, "tq bench: skip %v\n", err)
		}
	}
	pp := newProgressPrinter(stderr, cfg.progress)
	results, err := bench.Run(ctx, bench.Options{
		Transports: cfg.transports,
		Workloads:  cfg.workloads,
		Cases:      cfg.cases,
		Iters:      cfg.iters,
		Warmup:     cfg.warmup,
		Log:        cfg.log,
		Progress:   pp.update,
	})
	pp.finish()
	if err != nil {
		return err
	}
	switch cfg.format {
	case "json":
		err = writeJSON(stdout, results)
	case "csv":
		err = writeCSV(stdout, results)
	default:
		err = writeTable(stdout, results)
	}
	if err != nil {
		return err
	}
	ran := slices.ContainsFunc(results, func(r bench.Result) bool { return r.Skipped == "" })
	if !ran {
		fmt.Fprintln(stderr, "tq bench: nothing ran, so no plot and no Markdown")
		return nil
	}
	if cfg.plot != "" {
		if err := plotResults(cfg.plot, results); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	if cfg.markdown != "" {
		cmdline := "tq bench " + strings.Join(args, " ")
		if err := writeMarkdownFile(cfg.markdown, cfg.plot, cmdline, results); err != nil {
			return fmt.Errorf("markdown: %w", err)
		}
	}
	return nil
}

// metric is one bandwidth of a result.
type metric struct {
	key string
	get func(bench.Result) bench.Stat
}

var metrics = []metric{
	{"put", func(r bench.Result) bench.Stat { return r.Put }},
	{"get", func(r bench.Result) bench.Stat { return r.Get }},
	{"get_copy", func(r bench.Result) bench.Stat { return r.GetCopy }},
	{"total", func(r bench.Result) bench.Stat { return r.Total }},
	{"memcpy", func(r bench.Result) bench.Stat { return r.Memcpy }},
	{"tcp_stream", func(r bench.Result) bench.Stat { return r.TCPStream }},
	{"unix_stream", func(r bench.Result) bench.Stat { return r.UnixStream }},
}

// field is one named value of a result's JSON or CSV record.
type field struct {
	key string
	val any
}

func round(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// record flattens a result: names and identity, then every metric's
// median (key_gbps), min and max, then the ratios to the baseline.
func record(r bench.Result) []field {
	fs := []field{
		{"transport", r.Transport}, {"workload", r.Workload}, {"case", r.Case},
		{"bytes", r.Bytes}, {"iters", r.Iters}, {"get_kind", r.GetKind},
	}
	for _, m := range metrics {
		s := m.get(r)
		fs = append(fs,
			field{m.key + "_gbps", round(s.Median)},
			field{m.key + "_gbps_min", round(s.Min)},
			field{m.key + "_gbps_max", round(s.Max)})
	}
	base, _ := r.Baseline()
	return append(fs,
		field{"baseline", base},
		field{"put_ratio", round(r.Ratio(r.Put.Median))},
		field{"get_copy_ratio", round(r.Ratio(r.GetCopy.Median))},
		field{"total_ratio", round(r.Ratio(r.Total.Median))},
		field{"skipped", r.Skipped})
}

func writeJSON(w io.Writer, results []bench.Result) error {
	for _, r := range results {
		var b strings.Builder
		b.WriteByte('{')
		for i, f := range record(r) {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(f.key)
			v, err := json.Marshal(f.val)
			if err != nil {
				return err
			}
			b.Write(k)
			b.WriteByte(':')
			b.Write(v)
		}
		b.WriteString("}\n")
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	return nil
}

func writeCSV(w io.Writer, results []bench.Result) error {
	cw := csv.NewWriter(w)
	var header []string
	for _, f := range record(bench.Result{}) {
		header = append(header, f.key)
	}
	if err := cw.Write(header); err != nil {
		return err
	}
	for _, r := range results {
		var row []string
		for _, f := range record(r) {
			switch v := f.val.(type) {
			case float64:
				row = append(row, strconv.FormatFloat(v, 'f', -1, 64))
			default:
				row = append(row, fmt.Sprint(v))
			}
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func gbps(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "×"
}

// writeTable prints the medians and the ratios to each transport's
// baseline, then a line per skipped transport.
func writeTable(w io.Writer, results []bench.Result) error {
	if !slices.ContainsFunc(results, func(r bench.Result) bool { return r.Skipped == "" }) {
		for _, r := range results {
			fmt.Fprintf(w, "skipped %s/%s/%s: %s\n", r.Transport, r.Workload, r.Case, r.Skipped)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "transport\tworkload\tcase\tsize\tput\tget\tget_copy\ttotal\tmemcpy\ttcp_stream\tunix_stream\tbaseline\tput/base\tget_copy/base\ttotal/base\t")
	var skipped []string
	iters := 0
	for _, r := range results {
		if r.Skipped != "" {
			skipped = append(skipped, fmt.Sprintf("%s/%s/%s: %s", r.Transport, r.Workload, r.Case, r.Skipped))
			continue
		}
		iters = r.Iters
		base, _ := r.Baseline()
		get := gbps(r.Get.Median)
		if r.GetKind == "view" {
			get += " (view)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Transport, r.Workload, r.Case, bytesString(r.Bytes),
			gbps(r.Put.Median), get, gbps(r.GetCopy.Median), gbps(r.Total.Median),
			gbps(r.Memcpy.Median), gbps(r.TCPStream.Median), gbps(r.UnixStream.Median),
			base, ratio(r.Ratio(r.Put.Median)), ratio(r.Ratio(r.GetCopy.Median)), ratio(r.Ratio(r.Total.Median)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "GB/s (1e9 bytes/s), median of %d iterations; total = 2×bytes/(put+get); min and max: --json or --csv.\n", iters)
	for _, s := range skipped {
		fmt.Fprintf(w, "skipped %s\n", s)
	}
	return nil
}

// progressPrinter shows a run's progress on stderr: a bar redrawn in
// place on a terminal; piped, nothing but the final line, or a line per
// step with --progress.
type progressPrinter struct {
	w     io.Writer
	tty   bool
	lines bool
	start time.Time
	drawn bool
}

func newProgressPrinter(w io.Writer, lines bool) *progressPrinter {
	p := &progressPrinter{w: w, lines: lines, start: time.Now()}
	p.tty = isTerminal(w)
	return p
}

// isTerminal reports whether w is a terminal: an *os.File that takes a
// terminal's ioctl. A pipe, a file or any other writer is not.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (p *progressPrinter) update(pr bench.Progress) {
	if pr.Transport == "" {
		return // the end; finish says it
	}
	step := fmt.Sprintf("%s/%s/%s ", pr.Transport, pr.Workload, pr.Case)
	switch {
	case pr.Starting:
		step += "starting the writer and the reader"
	case pr.Iter <= 0:
		step += "warm-up"
	default:
		step += fmt.Sprintf("iteration %d/%d", pr.Iter, pr.Iters)
	}
	el := time.Since(p.start).Round(time.Second)
	if !p.tty {
		if p.lines {
			fmt.Fprintf(p.w, "tq bench: [%d/%d] %s (%v)\n", pr.Done, pr.Total, step, el)
		}
		return
	}
	const width = 30
	n := 0
	if pr.Total > 0 {
		n = width * pr.Done / pr.Total
	}
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d %s %v", strings.Repeat("#", n), strings.Repeat("-", width-n), pr.Done, pr.Total, step, el)
	p.drawn = true
}

func (p *progressPrinter) finish() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "tq bench: done in %v\n", time.Since(p.start).Round(time.Millisecond))
}

// writeMarkdownFile writes the results page: how it was made, on what,
// the table with spreads, and the chart.
func writeMarkdownFile(path, plot, cmdline string, results []bench.Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# TQ benchmark results\n\n")
	fmt.Fprintf(&b, "Generated by `make results`; do not edit by hand. Command:\n\n```\n%s\n```\n\n", cmdline)
	fmt.Fprintf(&b, "## Machine\n\n%s\n", machineInfo())
	fmt.Fprintf(&b, "## What is measured\n\n")
	fmt.Fprint(&b, `The reference flow (TransferQueue's performance test) between two processes: a writer process does
the KV batch put of the workload; a reader process lists the partition, does the batch get, then the
batch get into a caller-owned buffer (get_copy), verifies both against the writer's checksum, and
clears the keys. The controller and the storage unit run in the driver, a third process. Over shm the
batch get returns views into the unit's shared memory (no copy); over tcp and unix it copies into fresh
memory. In the same iteration and between the same two processes: copy() of the same bytes into
prefaulted memory (memcpy), and the same bytes over a plain TCP stream and a plain unix stream (1 MiB
writes, timed until the reader's one-byte ack). Bandwidths are GB/s (1e9 bytes/s) of payload, the
median of the iterations with [min–max]; total = 2×bytes/(put+get). "tcp" forces TQ's stream transport
over TCP loopback, "unix" runs it over the unit's unix socket. The baseline is memcpy for shm, the TCP
stream for tcp and the unix stream for unix.

`)
	fmt.Fprintf(&b, "## Results\n\n")
	fmt.Fprintf(&b, "| transport | workload | case | size | iters | put | get | get_copy | total | memcpy | tcp stream | unix stream | put / base | get_copy / base | total / base |\n")
	fmt.Fprintf(&b, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	spread := func(s bench.Stat) string {
		if s.Median == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f [%.2f–%.2f]", s.Median, s.Min, s.Max)
	}
	var skipped []string
	for _, r := range results {
		if r.Skipped != "" {
			skipped = append(skipped, fmt.Sprintf("- %s/%s/%s: %s", r.Transport, r.Workload, r.Case, r.Skipped))
			continue
		}
		get := spread(r.Get)
		if r.GetKind == "view" {
			get += " (view)"
		}
		base, _ := r.Baseline()
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Transport, r.Workload, r.Case, bytesString(r.Bytes), r.Iters,
			spread(r.Put), get, spread(r.GetCopy), spread(r.Total),
			spread(r.Memcpy), spread(r.TCPStream), spread(r.UnixStream),
			ratio(r.Ratio(r.Put.Median))+" "+base, ratio(r.Ratio(r.GetCopy.Median)), ratio(r.Ratio(r.Total.Median)))
	}
	if len(skipped) > 0 {
		fmt.Fprintf(&b, "\nSkipped:\n\n%s\n", strings.Join(skipped, "\n"))
	}
	if plot != "" {
		rel, err := filepath.Rel(filepath.Dir(path), plot)
		if err != nil {
			rel = plot
		}
		fmt.Fprintf(&b, "\n![put, get, get_copy and total per transport, workload and case](%s)\n", filepath.ToSlash(rel))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// machineInfo describes this host as a Markdown list.
func machineInfo() string {
	var b strings.Builder
	cpu, n := "unknown", 0
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "model name":
				cpu = strings.TrimSpace(v)
			case "processor":
				n++
			}
		}
	}
	fmt.Fprintf(&b, "- CPU: %s, %d logical CPUs (runtime.NumCPU %d)\n", cpu, n, runtime.NumCPU())
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				if kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64); err == nil {
					fmt.Fprintf(&b, "- Memory: %.1f GiB\n", float64(kb)/(1<<20))
				}
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		fmt.Fprintf(&b, "- Kernel: %s %s\n", runtime.GOOS, strings.TrimSpace(string(data)))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) >= 3 {
			fmt.Fprintf(&b, "- Load average when written (1, 5, 15 min): %s %s %s — other work on the host moves the figures\n", f[0], f[1], f[2])
		}
	}
	fmt.Fprintf(&b, "- Go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	return b.String()
}
