package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"
)

// Stat is a metric over a run's iterations, in GB/s (1e9 bytes per
// second).
type Stat struct {
	Median, Min, Max float64
}

// statOf summarizes per-iteration values.
func statOf(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	s := slices.Sorted(slices.Values(vs))
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1]}
}

// Result is one (transport, workload, case) of a run: bandwidths over the
// completed iterations. Skipped, when set, says why the transport did not
// run and the rest is empty.
type Result struct {
	Transport string
	Workload  string
	Case      string
	Bytes     int64  // payload of one put
	Iters     int    // completed iterations the stats are over
	GetKind   string // "view" (shm: no copy) or "copy"

	Put, Get, GetCopy, Total      Stat
	Memcpy, TCPStream, UnixStream Stat

	Skipped string
}

// Summarize turns samples into a result: per iteration bytes/put,
// bytes/get, bytes/get_copy, 2×bytes/(put+get) and the baselines'
// bytes/time, each as median, min and max.
func Summarize(transport string, w Workload, cs string, samples []Sample) Result {
	r := Result{Transport: transport, Workload: w.Name, Case: cs, Bytes: w.Bytes(cs), Iters: len(samples), GetKind: "copy"}
	if transport == "shm" {
		r.GetKind = "view"
	}
	b := float64(r.Bytes)
	gbps := func(f func(Sample) time.Duration, scale float64) Stat {
		vs := make([]float64, 0, len(samples))
		for _, s := range samples {
			if d := f(s); d > 0 {
				vs = append(vs, scale*b/d.Seconds()/1e9)
			}
		}
		return statOf(vs)
	}
	r.Put = gbps(func(s Sample) time.Duration { return s.Put }, 1)
	r.Get = gbps(func(s Sample) time.Duration { return s.Get }, 1)
	r.GetCopy = gbps(func(s Sample) time.Duration { return s.GetCopy }, 1)
	r.Total = gbps(func(s Sample) time.Duration { return s.Put + s.Get }, 2)
	r.Memcpy = gbps(func(s Sample) time.Duration { return s.Memcpy }, 1)
	r.TCPStream = gbps(func(s Sample) time.Duration { return s.TCPStream }, 1)
	r.UnixStream = gbps(func(s Sample) time.Duration { return s.UnixStream }, 1)
	return r
}

// Baseline returns the name and median of the baseline the transport is
// measured against: memcpy for shm, the plain TCP stream for tcp, the
// plain unix stream for unix.
func (r Result) Baseline() (string, float64) {
	switch r.Transport {
	case "shm":
		return "memcpy", r.Memcpy.Median
	case "unix":
		return "unix_stream", r.UnixStream.Median
	}
	return "tcp_stream", r.TCPStream.Median
}

// Ratio returns v over the baseline's median (0 without a baseline).
func (r Result) Ratio(v float64) float64 {
	if _, b := r.Baseline(); b > 0 {
		return v / b
	}
	return 0
}

// Options configures [Run].
type Options struct {
	Transports []string
	Workloads  []Workload
	Cases      []string
	Iters      int // timed iterations per result (default 3)
	Warmup     int // untimed iterations first
	// Exe and Args: see [SessionConfig].
	Exe  string
	Args []string
	// Log is the controller's metadata log (see [ServerConfig]).
	Log string
	// Progress, if set, is called as each session starts, before each
	// iteration, and once at the end.
	Progress func(Progress)
}

// Progress tells where a run is.
type Progress struct {
	Done, Total int // iterations, warm-up included
	Transport   string
	Workload    string
	Case        string
	Iter, Iters int  // this iteration of this result (warm-up iterations are ≤ 0)
	Starting    bool // the writer and reader are starting (the writer builds the workload)
}

// Run runs every (transport, workload, case) of opts against one server in
// this process and returns a result for each, in that order. Transports
// this host cannot run give a result with Skipped set. A failed iteration
// (a checksum mismatch included) ends the run with its error.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	if opts.Iters <= 0 {
		opts.Iters = 3
	}
	if opts.Warmup < 0 {
		opts.Warmup = 0
	}
	var capacity int64
	var runnable int
	for _, tr := range opts.Transports {
		if Available(tr) == nil {
			runnable++
		}
	}
	for _, w := range opts.Workloads {
		for _, cs := range opts.Cases {
			capacity = max(capacity, w.Bytes(cs))
		}
	}
	total := runnable * len(opts.Workloads) * len(opts.Cases) * (opts.Iters + opts.Warmup)
	progress := func(p Progress) {
		if opts.Progress != nil {
			p.Total = total
			opts.Progress(p)
		}
	}
	var results []Result
	var srv *Server
	defer func() {
		if srv != nil {
			srv.Close()
		}
	}()
	done := 0
	for _, tr := range opts.Transports {
		if err := Available(tr); err != nil {
			for _, w := range opts.Workloads {
				for _, cs := range opts.Cases {
					results = append(results, Result{Transport: tr, Workload: w.Name, Case: cs, Bytes: w.Bytes(cs), Skipped: err.Error()})
				}
			}
			continue
		}
		if srv == nil {
			// Room for one put plus the allocator's slack.
			var err error
			sc := ServerConfig{Capacity: capacity + capacity/4 + 64<<20, Log: opts.Log}
			if slices.Contains(opts.Transports, "rdma") && Available("rdma") == nil {
				name, _ := RDMADevice()
				os.Setenv(RDMADeviceEnv, name) // for the children
				sc.RDMADevice = name
			}
			if srv, err = StartServer(ctx, sc); err != nil {
				return results, fmt.Errorf("start server: %w", err)
			}
		}
		for _, w := range opts.Workloads {
			for _, cs := range opts.Cases {
				at := Progress{Done: done, Transport: tr, Workload: w.Name, Case: cs, Iters: opts.Iters, Starting: true}
				progress(at)
				at.Starting = false
				samples, err := runOne(ctx, srv, opts, tr, w, cs, func(i int) {
					at.Done, at.Iter = done, i+1
					progress(at)
				}, &done)
				if err != nil {
					return results, fmt.Errorf("%s/%s/%s: %w", tr, w.Name, cs, err)
				}
				r := Summarize(tr, w, cs, samples)
				if tr == "rdma" {
					r.Transport = rdmaLabel()
				}
				results = append(results, r)
			}
		}
	}
	progress(Progress{Done: done})
	return results, nil
}

func runOne(ctx context.Context, srv *Server, opts Options, tr string, w Workload, cs string, each func(int), done *int) ([]Sample, error) {
	s, err := StartSession(ctx, SessionConfig{Controller: srv.Addr(), Token: srv.Token(), Transport: tr, Workload: w, Case: cs, Exe: opts.Exe, Args: opts.Args})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var samples []Sample
	for i := -opts.Warmup; i < opts.Iters; i++ {
		each(i)
		sm, err := s.Iterate(ctx)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr // the processes were killed for it
			}
			return nil, err
		}
		*done++
		if i >= 0 {
			samples = append(samples, sm)
		}
	}
	return samples, nil
}
