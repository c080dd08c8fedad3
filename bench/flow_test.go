package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/transport/rdma"
)

func TestWorkloadSplit(t *testing.T) {
	for _, tc := range []struct {
		fields              int
		dense, ragged, strs int
	}{
		{9, 3, 3, 3},
		{8, 3, 3, 2},
		{3, 1, 1, 1},
		{1, 1, 0, 0},
		{2, 1, 1, 0},
	} {
		w := Workload{Batch: 4, Fields: tc.fields, Seq: 8}
		d, r, s := w.split(Complex)
		if d != tc.dense || r != tc.ragged || s != tc.strs {
			t.Errorf("%d fields: got %d/%d/%d, want %d/%d/%d", tc.fields, d, r, s, tc.dense, tc.ragged, tc.strs)
		}
	}
	if got := Small.Bytes(Simple); got != 288<<20 {
		t.Errorf("small simple: got %d bytes, want %d", got, 288<<20)
	}
	if got := Medium.Bytes(Simple); got != 2<<30 {
		t.Errorf("medium simple: got %d bytes, want %d", got, 2<<30)
	}
}

func TestWorkloadBuild(t *testing.T) {
	w := Workload{Name: "t", Batch: 7, Fields: 5, Seq: 33}
	for _, cs := range []string{Simple, Complex} {
		b, err := w.Build(cs)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := int64(b.Size()), w.Bytes(cs); got != want {
			t.Errorf("%s: built %d bytes, Bytes says %d", cs, got, want)
		}
		var kinds []string
		for _, f := range b.Fields() {
			kinds = append(kinds, f.Col.Kind().String())
		}
		want := []string{"dense", "dense", "dense", "dense", "dense"}
		if cs == Complex {
			want = []string{"dense", "dense", "ragged", "ragged", "opaque"}
			rag := b.Col("field_02")
			if got := []int{rag.RowShape(0)[0], rag.RowShape(3)[0], rag.RowShape(6)[0]}; !cmp.Equal(got, []int{1, 17, 33}) {
				t.Errorf("ragged row lengths: got %v, want 1, 17, 33", got)
			}
			if s := b.Col("field_04").String(0); len(s) != 33*4 || strings.Trim(s, "0123456789abcdef") != "" {
				t.Errorf("string row: got %q, want %d hex characters", s, 33*4)
			}
		}
		if diff := cmp.Diff(want, kinds); diff != "" {
			t.Errorf("%s: kinds (-want +got):\n%s", cs, diff)
		}
		again, _ := w.Build(cs)
		if Checksum(again) != Checksum(b) {
			t.Errorf("%s: two builds differ", cs)
		}
	}
}

func TestChecksum(t *testing.T) {
	b, err := Tiny.Build(Complex)
	if err != nil {
		t.Fatal(err)
	}
	sum := Checksum(b)
	// Field order does not matter.
	names := b.Names()
	rev, _ := b.Select(names[2], names[1], names[0])
	if Checksum(rev) != sum {
		t.Error("reordered fields changed the checksum")
	}
	// Any byte does.
	for _, f := range b.Fields() {
		c := f.Col.Clone()
		c.Data()[len(c.Data())/2] ^= 1
		fs := b.Fields()
		for i := range fs {
			if fs[i].Name == f.Name {
				fs[i].Col = c
			}
		}
		if Checksum(engine.MustBatch(fs...)) == sum {
			t.Errorf("flipping a bit of %s kept the checksum", f.Name)
		}
	}
	// So does a row boundary.
	strs := engine.StringsOf([]string{"ab", "c"})
	moved := engine.StringsOf([]string{"a", "bc"})
	if Checksum(engine.MustBatch(engine.Field{Name: "s", Col: strs})) == Checksum(engine.MustBatch(engine.Field{Name: "s", Col: moved})) {
		t.Error("moving a row boundary kept the checksum")
	}
}

func TestStatOf(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Stat
	}{
		{nil, Stat{}},
		{[]float64{3}, Stat{3, 3, 3}},
		{[]float64{5, 1, 3}, Stat{3, 1, 5}},
		{[]float64{4, 1, 3, 2}, Stat{2.5, 1, 4}},
	} {
		if got := statOf(tc.in); got != tc.want {
			t.Errorf("statOf(%v): got %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	w := Workload{Name: "w", Batch: 1, Fields: 1, Seq: 250_000_000} // 1e9 bytes
	s := []Sample{
		{Put: time.Second, Get: time.Second, GetCopy: 2 * time.Second, Memcpy: 100 * time.Millisecond, TCPStream: 250 * time.Millisecond, UnixStream: 200 * time.Millisecond},
		{Put: 500 * time.Millisecond, Get: 250 * time.Millisecond, GetCopy: time.Second, Memcpy: 100 * time.Millisecond, TCPStream: 500 * time.Millisecond, UnixStream: 200 * time.Millisecond},
	}
	r := Summarize("tcp", w, Simple, s)
	want := Result{
		Transport: "tcp", Workload: "w", Case: Simple, Bytes: 1e9, Iters: 2, GetKind: "copy",
		Put: Stat{1.5, 1, 2}, Get: Stat{2.5, 1, 4}, GetCopy: Stat{0.75, 0.5, 1},
		Total:  Stat{(1 + 2/0.75) / 2, 1, 2 / 0.75},
		Memcpy: Stat{10, 10, 10}, TCPStream: Stat{3, 2, 4}, UnixStream: Stat{5, 5, 5},
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("Summarize (-want +got):\n%s", diff)
	}
	if name, v := r.Baseline(); name != "tcp_stream" || v != 3 {
		t.Errorf("baseline: got %s %v, want tcp_stream 3", name, v)
	}
	if got := r.Ratio(r.Put.Median); got != 0.5 {
		t.Errorf("put ratio: got %v, want 0.5", got)
	}
}

// TestRunTiny runs the whole flow — server here, writer and reader in
// two processes — on the tiny workload over every transport.
func TestRunTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var calls int
	res, err := Run(ctx, Options{
		Transports: []string{"shm", "tcp", "unix", "rdma"},
		Workloads:  []Workload{Tiny},
		Cases:      []string{Simple, Complex},
		Iters:      2,
		Warmup:     1,
		Args:       []string{"-test.run=^$"},
		Progress:   func(Progress) { calls++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 8 {
		t.Fatalf("got %d results, want 8", len(res))
	}
	ran := 3
	for _, r := range res {
		if r.Transport == "rdma" {
			if !strings.Contains(r.Skipped, "no RDMA transport") {
				t.Errorf("rdma: got skip %q", r.Skipped)
			}
			continue
		}
		if strings.HasPrefix(r.Transport, "rdma (") {
			ran = 4 // this build has RDMA: the emulated device if nothing else
		}
		if r.Skipped != "" || r.Iters != 2 || r.Put.Median <= 0 || r.Get.Median <= 0 || r.GetCopy.Median <= 0 ||
			r.Memcpy.Median <= 0 || r.TCPStream.Median <= 0 || r.UnixStream.Median <= 0 {
			t.Errorf("incomplete result %+v", r)
		}
	}
	// Once as each session starts, before each iteration, and at the end.
	if want := ran*2*(1+3) + 1; calls != want {
		t.Errorf("progress called %d times, want %d", calls, want)
	}
}

// TestSessionRDMA runs the flow over RDMA on the emulated device: the
// writer's put and the reader's gets move by one-sided RDMA, the bytes
// check out, and the rows are labelled as emulated.
func TestSessionRDMA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	if !rdma.Supported {
		t.Skip("this build has no RDMA transport")
	}
	t.Setenv(RDMADeviceEnv, "emu0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Transports: []string{"rdma"}, Workloads: []Workload{Tiny}, Cases: []string{Simple}, Iters: 2,
		Args: []string{"-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Skipped != "" || res[0].Iters != 2 || res[0].Transport != "rdma (emulated emu0)" {
		t.Fatalf("got %+v, want two iterations labelled rdma (emulated emu0)", res)
	}
}

// TestSessionChecksumMismatch: a get that does not match the writer's
// checksum fails the iteration.
func TestSessionChecksumMismatch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := StartServer(ctx, ServerConfig{Capacity: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s, err := StartSession(ctx, SessionConfig{Controller: srv.Addr(), Token: srv.Token(), Transport: "tcp", Workload: Tiny, Case: Simple, Args: []string{"-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Iterate(ctx); err != nil {
		t.Fatal(err)
	}
	s.sum ^= 1
	_, err = s.Iterate(ctx)
	if err == nil || !strings.Contains(err.Error(), errChecksum.Error()) {
		t.Fatalf("got %v, want a checksum mismatch", err)
	}
}

func TestAvailable(t *testing.T) {
	if err := Available("rdma"); rdma.Supported && err != nil || !rdma.Supported && !errors.Is(err, engine.ErrNotSupported) {
		t.Errorf("rdma (supported by this build: %v): got %v", rdma.Supported, err)
	}
	if err := Available("shm"); err != nil {
		t.Errorf("shm: %v", err)
	}
	if _, err := Transports("carrier-pigeon"); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("unknown transport: got %v, want ErrInvalid", err)
	}
}

var flowWorkloads = flag.String("flow.workloads", "small", "workloads of BenchmarkFlow: small, medium, all, or tiny (a few KiB, to check the harness)")

// BenchmarkFlow is the reference flow between a writer and a reader
// process (see flow.go), per transport, workload and case, with its
// baselines between the same two processes in the same iteration:
//
//	go test -run '^$' -bench Flow -benchtime 5x ./bench [-args -flow.workloads=all]
//
// Targets: shm put ≥ 0.8× memcpy; tcp put and get ≥ 0.8× the TCP stream.
func BenchmarkFlow(b *testing.B) {
	ws, err := Workloads(*flowWorkloads)
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	var capacity int64
	for _, w := range ws {
		capacity = max(capacity, w.Bytes(Simple))
	}
	srv, err := StartServer(ctx, ServerConfig{Capacity: capacity + capacity/4 + 64<<20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	for _, tr := range []string{"shm", "tcp", "unix", "rdma"} {
		for _, w := range ws {
			for _, cs := range []string{Simple, Complex} {
				b.Run(fmt.Sprintf("transport=%s/workload=%s/case=%s", tr, w.Name, cs), func(b *testing.B) {
					if err := Available(tr); err != nil {
						b.Skip(err)
					}
					benchFlow(b, srv, tr, w, cs)
				})
			}
		}
	}
}

// benchFlow runs the flow of workload w, case cs over transport tr
// against srv: a warm-up iteration, then timed ones, reported.
func benchFlow(b *testing.B, srv *Server, tr string, w Workload, cs string) {
	ctx := b.Context()
	s, err := StartSession(ctx, SessionConfig{Controller: srv.Addr(), Token: srv.Token(), Transport: tr, Workload: w, Case: cs, Args: []string{"-test.run=^$"}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Iterate(ctx); err != nil { // warm-up
		b.Fatal(err)
	}
	var samples []Sample
	b.SetBytes(s.Bytes())
	for b.Loop() {
		sm, err := s.Iterate(ctx)
		if err != nil {
			b.Fatal(err)
		}
		samples = append(samples, sm)
	}
	reportResult(b, Summarize(tr, w, cs, samples))
}

func reportResult(b *testing.B, r Result) {
	for _, m := range []struct {
		name string
		s    Stat
	}{
		{"put", r.Put}, {"get", r.Get}, {"get_copy", r.GetCopy}, {"total", r.Total},
		{"memcpy", r.Memcpy}, {"tcp_stream", r.TCPStream}, {"unix_stream", r.UnixStream},
	} {
		b.ReportMetric(m.s.Median, m.name+"_GB/s")
	}
	base, _ := r.Baseline()
	b.ReportMetric(r.Ratio(r.Put.Median), "put/"+base)
	b.ReportMetric(r.Ratio(r.GetCopy.Median), "get_copy/"+base)
	b.ReportMetric(r.Ratio(r.Total.Median), "total/"+base)
}

// A child that dies says how it ended (the signal, or its exit status)
// after the broken pipe and its stderr: a killed reader used to report
// only `reader process: EOF`.
func TestDeadChildSaysHowItEnded(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   []string
	}{
		// "reader process: " then EOF, or "file already closed" when
		// cmd.Wait (which closes the pipe) ran before the read.
		{"kill -KILL $$", []string{"reader process: ", "(signal: killed)"}},
		{"echo boom >&2; exit 3", []string{"reader process: ", "(exit status 3)", "boom"}},
	} {
		_, _, err := startProc("/bin/sh", []string{"-c", tc.script}, roleReader, childConfig{})
		if assert.Error(t, err, "%s", tc.script) {
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w, "%s", tc.script)
			}
		}
	}
}
