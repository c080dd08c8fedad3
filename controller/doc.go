// Package controller is TQ's metadata service: partitions, the global row
// index allocator, production bits per (row, field), consumption per task,
// keys, tags, samplers and checkpoints. It never touches column bytes.
//
// A producer allocates rows, writes their bytes to storage, then commits
// the cells; a consumer fetches rows that are produced for the fields it
// needs and not yet consumed by its task:
//
//	c, _ := controller.New(controller.DefaultConfig())
//	m, _ := c.Insert("train", 4, []string{"prompt"})
//	c.Commit(engine.CommitRequest{Partition: "train", Indexes: m.Indexes,
//		Fields: []engine.CommitField{{Name: "prompt", DType: engine.Int64,
//			Kind: engine.Dense, Shape: engine.Shape{128}, Locs: locs}}})
//	got, _ := c.Fetch(ctx, engine.FetchRequest{Partition: "train", Task: "actor",
//		Fields: []string{"prompt"}, BatchSize: 4, Wait: true})
//
// Costs: a fetch, a key lookup or a commit costs O(rows × fields in the
// request), never O(rows in the partition): readiness is kept in ordered
// per-(task, fields) views that commits and consumption update
// incrementally, and the end of a finite stream is a comparison of counts
// kept per task. Status queries, listing, statistics and resets walk the
// partition. Rows and cells hold no pointers (rowtable.go), so the garbage
// collector's work does not grow with them either. The controller is safe
// for concurrent use and locks per partition.
//
// Batches a rank-aware or GRPO sampler keeps for a data-parallel group go
// back to the task when the group leaves them behind for
// Config.KeptBatchTTL (keptbatches.go).
//
// A [Server] serves a controller, and a [Registry] of storage units, to
// other processes over the wire protocol (protocol.md beside this file
// describes each control op):
//
//	srv := controller.NewServer(c, controller.ServerConfig{Token: token})
//	go srv.Serve(listener) // a unix socket or a loopback TCP listener
//	…
//	srv.Shutdown(ctx) // blocked fetches get a reply, then connections close
//
// Clients reach it with client.DialMeta.
package controller
