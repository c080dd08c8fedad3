// Package sampler holds TQ's built-in samplers: the policies that choose
// which ready rows a fetch returns and which rows the fetching task has
// consumed. The controller calls them through [engine.Sampler].
//
//   - [Sequential] takes the first BatchSize ready rows. It is the default.
//   - [GRPO] takes whole prompt groups: n rows put together (see
//     [engine.RowOrigin]), whatever global indexes they got.
//   - [RankAware] gives every rank of a data-replica group the same batch and
//     different groups disjoint batches.
//   - [SeqlenBalanced] takes whole prompt groups for all DP ranks at once and
//     splits them so that every rank gets about the same number of tokens,
//     using [KarmarkarKarp] on the "total_lengths" tag.
//
// Every sampler is safe for concurrent use. The slices a sampler returns are
// freshly allocated and owned by the caller; sampled and consumed never share
// memory. The caching samplers ([GRPO], [RankAware], [SeqlenBalanced])
// implement [engine.CachingSampler] and [engine.StatefulSampler]; their state
// is a JSON document with a "version" field.
//
// Choosing a sampler for a controller and calling it directly:
//
//	s, err := sampler.NewSeqlenBalanced(4, 2) // 4 responses per prompt, 2 DP ranks
//	if err != nil {
//		return err
//	}
//	sampled, consumed, err := s.Sample(engine.SampleRequest{
//		Partition: "train",
//		Task:      "actor",
//		BatchSize: 8, // per DP rank: two prompt groups
//		Ready:     engine.ReadySlice{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
//		Options:   engine.SamplingOptions{HasRank: true, DPRank: 0, BatchIndex: 0},
//		Tags:      tagsOf, // func(index uint64) engine.Tags with "total_lengths"
//	})
//
// A user's own sampler is any type with the Sample method. This one takes
// every other ready row and consumes everything it skipped over too:
//
//	type everyOther struct{}
//
//	func (everyOther) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
//		if req.BatchSize < 0 {
//			return nil, nil, fmt.Errorf("every other: batch size %d: %w", req.BatchSize, engine.ErrInvalid)
//		}
//		if req.BatchSize == 0 {
//			return nil, nil, nil
//		}
//		req.Ready.Ascend(func(i uint64) bool {
//			if len(consumed)%2 == 0 {
//				sampled = append(sampled, i)
//			}
//			consumed = append(consumed, i)
//			return len(sampled) < req.BatchSize
//		})
//		return sampled, consumed, nil
//	}
//
// Returning no rows means "not enough data yet"; the controller asks again
// later. A custom sampler that remembers answers for data-replica peers implements
// [engine.CachingSampler] as well, and one with state worth checkpointing
// implements [engine.StatefulSampler].
package sampler
