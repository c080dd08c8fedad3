// Package bench holds TQ's cross-process and cross-component benchmarks.
//
// The library (flow.go, proc.go, workloads.go, result.go) is the reference
// performance test's flow: a writer process puts a workload through the KV
// API, a reader process lists, gets (views over shared memory), gets into
// its own buffer, verifies checksums and clears, while the driver runs the
// controller and a storage unit. Each iteration also times copy() of the
// same bytes and plain TCP and unix streams between the same two
// processes. `tq bench` and BenchmarkFlow both use it:
//
//	func main() {
//		bench.ChildMain() // the writer and the reader are this binary
//		res, err := bench.Run(ctx, bench.Options{
//			Transports: []string{"shm", "tcp"},
//			Workloads:  []bench.Workload{bench.Small},
//			Cases:      []string{bench.Simple, bench.Complex},
//			Iters:      3,
//		})
//		...
//	}
//
// The _test.go benchmarks measure the same workloads in one process and
// against a server process, each next to its physical baseline in the same
// iteration, so the ratios hold on a noisy machine:
//
//	go test -run '^$' -bench . -count 6 ./bench | tee new.txt
//	benchstat old.txt new.txt
package bench
