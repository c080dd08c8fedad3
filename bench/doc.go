// Package bench holds TQ's cross-component benchmarks: the reference
// workloads through the KV and batch APIs, each measured next to its
// physical baseline (a plain copy() of the same bytes) in the same
// iteration, so the ratios hold on a noisy machine.
//
//	go test -run '^$' -bench . -count 6 ./bench | tee new.txt
//	benchstat old.txt new.txt
package bench
