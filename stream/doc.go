// Package stream is TQ's streaming loader (the reference's
// StreamingDataLoader): a Go iterator over the micro-batches of one
// trainer rank, fetched ahead while the loop body computes.
//
//	l, err := stream.New(c, stream.Config{
//		Partitions:     []string{"step_0", "step_1"}, // one per global step
//		Task:           "actor",
//		Fields:         []string{"input_ids", "attention_mask"},
//		MicroBatchSize: 8,
//		DPRank:         rank / tpSize, // this rank's data-parallel group
//		DPSize:         worldSize / tpSize,
//		Prefetch:       2,
//	})
//	if err != nil {
//		return err
//	}
//	for b, err := range l.All(ctx) {
//		if err != nil {
//			return err
//		}
//		out := train(b.Data) // b.Data's views live until the body returns
//		c.Put(ctx, out, b.Meta)
//	}
//
// Ranks of one data-parallel group (same DPRank) receive identical
// micro-batches and different groups disjoint ones: the loader's fetches
// name a shared sampler (rank_aware by default; seqlen_balanced balances
// tokens across the groups, token_budget bounds each micro-batch by a sum
// of sequence lengths) and count micro-batches per partition in lockstep
// (the batch index).
//
// In finite mode (the default) the loop ends once every partition is
// drained: its producer marked it done ([client.Client.MarkDone]) and the
// rank's group has taken all it can. A short last micro-batch is
// yielded. Without the done marker the loader waits for more rows, as in
// continuous mode (Config.Continuous), which never ends on its own.
//
// With Config.EndWhenConsumed a partition also ends, as in the reference,
// once the task consumed every row it has (pre-allocated ones included:
// the controller's PreAlloc). Its fetches tell the controller so
// (engine.FetchRequest.EndWhenConsumed): once every row is produced, the
// last micro-batch may be short, as from a partition marked done.
//
// A partition the controller does not have yet is waited for (a trainer
// may start before its producers' first put). With
// Config.PartitionMustExist it is an error wrapping [engine.ErrInvalid]
// that names it (a misspelled name would wait for good).
//
// A partition cleared under the loader ends for it as a drained one does.
// Each fetch's reply names the partition's generation
// (engine.BatchMeta.PartitionGen); the loader remembers it from its first
// micro-batch of a partition and names it in its later fetches there
// (engine.FetchRequest.PartitionGen), so that when a DP peer that
// finished first clears the partition, this rank's next fetch, or the one
// waiting, is told so (engine.ErrDone) instead of waiting for the
// partition for good or reading the rows of one made again under the same
// id. A read of fetched rows that the clear removed before the loader
// read them ends the partition so too: the failed read makes the loader
// fetch again, once, naming their generation. The loader names the
// generation's cluster too (engine.FetchRequest.Cluster): a controller
// that started anew in memory, as another cluster whose generations start
// again and may match by chance, ends the partition so as well. Until it
// has read a row of a partition the loader waits for it to be made, as
// above, unless it started at a Position that names the partition's
// generation: [Loader.Next] names the generation of the partition at its
// Step (Position.Gen, GenOf and Cluster) once the loader had a micro-batch of
// it, and a loader started with Config.Start set to it names the
// generation in its fetches of that partition, so that a rank that
// restarts (a new process) after a DP peer cleared the partition moves on
// to the next one rather than wait for good, or read the rows of one made
// again. The generation is of the partition at Step alone: the loader
// drops it as it moves on, and a Position whose Step is changed by hand
// must have Gen, GenOf and Cluster zeroed; [New] refuses a start position
// whose GenOf is not the partition at its Step (the partition there would
// end at once, as a cleared one, and be skipped).
//
// Breaking out of the loop, or canceling ctx, stops the prefetcher. What
// it fetched and the loop never saw is not lost for the task: with a
// private sampler (sequential, grpo) its rows are given back to the task
// (any consumer of the task may fetch them again); with a shared one they
// stay cached for the group's batch index, and a rank that restarts with
// Config.Start set to [Loader.Next] gets exactly those micro-batches (or,
// the partition cleared meanwhile, goes on with the next, as above). The
// loader gives its fetches of them back all the same (the batches stay
// kept), so that if the group never comes back for them, and no peer of
// the group took them, they go back to the task for the other groups
// after the controller's Config.KeptBatchTTL.
//
// A private sampler's fetches hold their rows for the loader
// (engine.FetchRequest.Hold) until the loop takes the micro-batch, which
// acknowledges them ([client.Client.Acknowledge]): until then another
// consumer of the task that finds the partition done waits for those rows
// instead of ending without them, should they come back. Rows a loader
// holds when it dies go back to the task after the controller's
// Config.HeldFetchTTL; a micro-batch whose hold outlived it is dropped
// (logged), its rows being the task's again. Set that TTL (tq serve
// --held-fetch-ttl) above Prefetch times the longest step of the loop.
// A give-back that fails (the controller unreachable) is tried again a
// few times with a growing pause; one that fails for good is logged and
// reported by [Loader.Err], since the loop that could be told has ended.
package stream
