// Package engine holds TQ's domain: dtypes, columns, batches, metas,
// placement descriptors, the typed errors, the requests and replies of the
// metadata service, and the small interfaces the other packages implement
// (samplers, transports). It does no I/O and imports no other TQ package.
//
// Building a batch from ordinary Go slices and reading it back:
//
//	ids, _ := engine.DenseOf([]int64{1, 2, 3, 4, 5, 6}, 3) // 2 rows of shape (3)
//	resp := engine.RaggedOf([][]float32{{0.5}, {0.1, 0.2}})
//	text := engine.StringsOf([]string{"hello", "wörld"})
//	b, err := engine.NewBatch(
//		engine.Field{Name: "input_ids", Col: ids},
//		engine.Field{Name: "log_probs", Col: resp},
//		engine.Field{Name: "prompt", Col: text},
//	)
//	row1, _ := engine.Row[float32](b.Col("log_probs"), 1) // []float32{0.1, 0.2}, no copy
//
// Cells are little-endian, on the wire and in storage, and columns view
// host memory as typed values: TQ builds only for little-endian hosts
// (bigendian.go stops the build elsewhere).
package engine
