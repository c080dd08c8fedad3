package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tqgo/tq/bench"
	"github.com/tqgo/tq/transport/rdma"
)

// An error names the flag and its whole value, as well as the item it
// refuses: a bad --transport, --workload or --case used to name only the
// item (`transport "ib"`).
func TestParseBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		transports []string
		workloads  []string
		cases      []string
		iters      int
		format     string
		err        string
	}{
		{args: nil, transports: []string{"shm", "tcp", "unix", "rdma"}, workloads: []string{"small"}, cases: []string{"simple", "complex"}, iters: 3, format: "table"},
		{args: []string{"--transport", "shm", "--workload", "all", "--case", "complex", "--iters", "5", "--json"},
			transports: []string{"shm"}, workloads: []string{"small", "medium"}, cases: []string{"complex"}, iters: 5, format: "json"},
		{args: []string{"-transport=rdma", "-workload=medium", "-case=simple", "-csv"},
			transports: []string{"rdma"}, workloads: []string{"medium"}, cases: []string{"simple"}, iters: 3, format: "csv"},
		{args: []string{"--transport", "tcp,shm,tcp", "--workload", "medium,small", "--case", "all,simple"},
			transports: []string{"tcp", "shm"}, workloads: []string{"medium", "small"}, cases: []string{"simple", "complex"}, iters: 3, format: "table"},
		{args: []string{"--transport", "ib"}, err: `--transport "ib": transport "ib" (want shm, tcp, unix, rdma or all)`},
		{args: []string{"--transport", "shm,"}, err: `--transport "shm,": transport ""`},
		{args: []string{"--workload", "huge"}, err: `--workload "huge": workload "huge" (want small, medium or all)`},
		{args: []string{"--case", "hard"}, err: `--case "hard": case "hard" (want simple, complex or all)`},
		{args: []string{"--iters", "0"}, err: "--iters 0"},
		{args: []string{"--warmup", "-1"}, err: "--warmup -1"},
		{args: []string{"--json", "--csv"}, err: "choose one"},
		{args: []string{"extra"}, err: "no arguments"},
		{args: []string{"--nope"}, err: "flag provided but not defined"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var errb bytes.Buffer
			cfg, err := parseBenchFlags(tc.args, &errb)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ws []string
			for _, w := range cfg.workloads {
				ws = append(ws, w.Name)
			}
			got := []any{cfg.transports, ws, cfg.cases, cfg.iters, cfg.format}
			want := []any{tc.transports, tc.workloads, tc.cases, tc.iters, tc.format}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

// `tq bench --plot` refuses a file it cannot draw (only .png) before
// anything runs; it used to run the whole benchmark (minutes with
// --workload medium) and only then fail, leaving --markdown unwritten.
func TestBenchRefusesAPlotItCannotDrawUpFront(t *testing.T) {
	for _, p := range []string{"out.svg", "out", "chart.PNG.txt", "chart.PNG"} {
		_, err := parseBenchFlags([]string{"--plot", p}, io.Discard)
		if want := fmt.Sprintf("--plot %q: only .png is supported", p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--plot %s: got error %v, want one containing %q", p, err, want)
		}
	}
	if _, err := parseBenchFlags([]string{"--plot", "dir/out.png"}, io.Discard); err != nil {
		t.Errorf("--plot dir/out.png: %v", err)
	}
}

// fakeResults: shm and tcp on small, rdma skipped.
func fakeResults() []bench.Result {
	st := func(m float64) bench.Stat { return bench.Stat{Median: m, Min: m * 0.9, Max: m * 1.1} }
	return []bench.Result{
		{Transport: "shm", Workload: "small", Case: "simple", Bytes: 288 << 20, Iters: 3, GetKind: "view",
			Put: st(10), Get: st(150), GetCopy: st(9), Total: st(18.75), Memcpy: st(20), TCPStream: st(3), UnixStream: st(5)},
		{Transport: "tcp", Workload: "small", Case: "complex", Bytes: 240 << 20, Iters: 3, GetKind: "copy",
			Put: st(2.5), Get: st(2), GetCopy: st(2.8), Total: st(2.2), Memcpy: st(18), TCPStream: st(4), UnixStream: st(5)},
		{Transport: "rdma", Workload: "small", Case: "simple", Bytes: 288 << 20, Skipped: "rdma: not available on this host"},
	}
}

func TestBenchJSON(t *testing.T) {
	var out bytes.Buffer
	if err := writeJSON(&out, fakeResults()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), out.String())
	}
	var shm map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &shm); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"transport", "workload", "case", "bytes", "put_gbps", "get_gbps", "get_copy_gbps", "total_gbps",
		"memcpy_gbps", "tcp_stream_gbps", "unix_stream_gbps", "put_gbps_min", "put_gbps_max", "total_gbps_min", "total_gbps_max", "put_ratio"} {
		if _, ok := shm[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, lines[0])
		}
	}
	for k, want := range map[string]any{"transport": "shm", "put_gbps": 10.0, "put_gbps_min": 9.0, "put_ratio": 0.5, "baseline": "memcpy", "bytes": float64(288 << 20)} {
		if shm[k] != want {
			t.Errorf("%s: got %v, want %v", k, shm[k], want)
		}
	}
	var tcp map[string]any
	json.Unmarshal([]byte(lines[1]), &tcp)
	if tcp["baseline"] != "tcp_stream" || tcp["put_ratio"] != 0.625 {
		t.Errorf("tcp: baseline %v, put_ratio %v; want tcp_stream, 0.625", tcp["baseline"], tcp["put_ratio"])
	}
	if !strings.Contains(lines[2], `"skipped":"rdma: not available on this host"`) {
		t.Errorf("rdma line: %s", lines[2])
	}
}

func TestBenchCSV(t *testing.T) {
	var out bytes.Buffer
	if err := writeCSV(&out, fakeResults()); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Fatalf("got %d rows, want a header and 3", len(rows))
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, c := range []struct{ row, key, want string }{
		{"1", "transport", "shm"}, {"1", "put_gbps", "10"}, {"1", "get_kind", "view"}, {"1", "total_gbps_max", "20.625"},
		{"2", "get_copy_ratio", "0.7"}, {"3", "skipped", "rdma: not available on this host"},
	} {
		i, ok := col[c.key]
		if !ok {
			t.Errorf("no column %q", c.key)
			continue
		}
		r := rows[map[string]int{"1": 1, "2": 2, "3": 3}[c.row]]
		if r[i] != c.want {
			t.Errorf("row %s %s: got %q, want %q", c.row, c.key, r[i], c.want)
		}
	}
}

func TestBenchTable(t *testing.T) {
	var out bytes.Buffer
	if err := writeTable(&out, fakeResults()); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"150.00 (view)", "memcpy", "0.50×", "tcp_stream", "0.62×", "median of 3 iterations",
		"skipped rdma/small/simple: rdma: not available on this host"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
}

func TestBenchOnlySkipped(t *testing.T) {
	t.Setenv(bench.RDMADeviceEnv, "mlx5_tq_absent") // unavailable whether or not the build has RDMA
	dir := t.TempDir()
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bench", "--transport", "rdma", "--case", "simple", "--plot", filepath.Join(dir, "p.png")}, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "skipped rdma/small/simple: rdma: not available on this host ("; !strings.HasPrefix(got, want) || strings.Count(got, "\n") != 1 {
		t.Errorf("got %q, want one line starting %q", got, want)
	}
	if !strings.Contains(errb.String(), "nothing ran") {
		t.Errorf("stderr: %s", errb.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "p.png")); err == nil {
		t.Error("a plot of nothing was written")
	}
}

func TestBenchMarkdown(t *testing.T) {
	dir := t.TempDir()
	md := filepath.Join(dir, "RESULTS.md")
	if err := writeMarkdownFile(md, filepath.Join(dir, "results.png"), "tq bench --iters 3", fakeResults()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"tq bench --iters 3", "## Machine", "- Go: go", "| shm | small | simple | 288 MiB | 3 | 10.00 [9.00–11.00]",
		"0.50× memcpy", "(results.png)", "rdma/small/simple: rdma: not available"} {
		if !strings.Contains(s, want) {
			t.Errorf("markdown lacks %q:\n%s", want, s)
		}
	}
}

func TestBenchPlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.png")
	if err := plotResults(path, fakeResults()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	// Two panels (shm and tcp; rdma was skipped), 9 × 3 inches each at 110 dpi.
	if cfg.Width != 990 || cfg.Height != 660 {
		t.Errorf("got a %d×%d image, want 990×660", cfg.Width, cfg.Height)
	}
	if err := plotResults(filepath.Join(t.TempDir(), "r.pdf"), fakeResults()); err == nil {
		t.Error("a .pdf plot succeeded")
	}
	if err := plotResults(path, fakeResults()[2:]); err == nil {
		t.Error("a plot of nothing succeeded")
	}
}

// TestBenchTiny runs `tq bench` end to end on the tiny workload: the
// writer and reader are this test binary (TestMain calls
// bench.ChildMain).
func TestBenchTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Setenv(bench.RDMADeviceEnv, "emu0")
	dir := t.TempDir()
	plot, md := filepath.Join(dir, "r.png"), filepath.Join(dir, "r.md")
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bench", "--workload", "tiny", "--iters", "2", "--json", "--plot", plot, "--markdown", md, "--progress"}, &out, &errb)
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 8 {
		t.Fatalf("got %d JSON lines, want 8 (4 transports × 2 cases):\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if r["transport"] == "rdma" {
			if rdma.Supported || !strings.Contains(r["skipped"].(string), "not available on this host") {
				t.Errorf("rdma: %s", l)
			}
			continue
		}
		if r["iters"] != 2.0 || r["put_gbps"].(float64) <= 0 || r["get_copy_gbps"].(float64) <= 0 || r["tcp_stream_gbps"].(float64) <= 0 {
			t.Errorf("incomplete: %s", l)
		}
	}
	wants := []string{"skip rdma: not available on this host", "shm/tiny/simple starting", "shm/tiny/complex iteration 2/2", "done in"}
	if rdma.Supported { // the emulated device, labelled so
		wants[0] = "rdma/tiny/complex iteration 2/2"
		if !strings.Contains(out.String(), `"transport":"rdma (emulated emu0)"`) {
			t.Errorf("no rdma rows labelled emulated:\n%s", out.String())
		}
	}
	for _, want := range wants {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	for _, p := range []string{plot, md} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// Piped (stderr not a terminal) and without --progress, tq bench prints
// no step lines: only the skips, and the line that says it is done.
func TestBenchQuietWhenPiped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bench", "--workload", "tiny", "--transport", "tcp", "--case", "simple", "--iters", "1"}, &out, &errb)
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	if got := errb.String(); strings.Contains(got, "iteration") || strings.Contains(got, "starting") || !strings.Contains(got, "done in") {
		t.Errorf("piped stderr is not quiet:\n%s", got)
	}
}

// `tq bench` refuses a --plot or --markdown file it could not write, and
// the two flags naming the same file, before anything runs: it used to
// run the whole benchmark (minutes with --workload medium) and only then
// fail on "open /no/such/dir/r.md", or let the Markdown overwrite the
// chart.
func TestBenchRefusesOutputFilesItCannotWriteUpFront(t *testing.T) {
	if testing.Short() {
		t.Skip("would start processes when not refused")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--plot", "/no/such/dir/r.png"}, `--plot "/no/such/dir/r.png": directory /no/such/dir: `},
		{[]string{"--markdown", "/no/such/dir/r.md"}, `--markdown "/no/such/dir/r.md": directory /no/such/dir: `},
		{[]string{"--markdown", filepath.Join(file, "r.md")}, fmt.Sprintf("--markdown %q: %s is not a directory", filepath.Join(file, "r.md"), file)},
		{[]string{"--markdown", dir}, fmt.Sprintf("--markdown %q: is a directory", dir)},
		{[]string{"--plot", filepath.Join(dir, "r.png"), "--markdown", filepath.Join(dir, ".", "r.png")}, "--plot and --markdown name the same file"},
	} {
		args := append([]string{"bench", "--workload", "tiny", "--transport", "tcp", "--case", "simple", "--iters", "1"}, tc.args...)
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.args, err, tc.want)
		}
		if out.Len() > 0 || strings.Contains(errb.String(), "done in") {
			t.Errorf("%q: the benchmark ran:\n%s%s", tc.args, out.String(), errb.String())
		}
	}
}
