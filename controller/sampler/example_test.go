package sampler_test

import (
	"fmt"

	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
)

func ExampleGRPO() {
	g, err := sampler.NewGRPO(3)
	if err != nil {
		panic(err)
	}
	sampled, consumed, err := g.Sample(engine.SampleRequest{
		Partition: "train",
		Task:      "actor",
		BatchSize: 6,
		Ready:     engine.ReadySlice{0, 1, 3, 4, 5, 6, 7, 9, 10, 11},
	})
	fmt.Println(sampled, consumed, err)
	// Output: [3 4 5 9 10 11] [3 4 5 9 10 11] <nil>
}

func ExampleSeqlenBalanced() {
	s, err := sampler.NewSeqlenBalanced(2, 2) // prompt groups of 2, 2 DP ranks
	if err != nil {
		panic(err)
	}
	lengths := []int64{10, 90, 50, 50, 30, 30, 20, 20}
	req := engine.SampleRequest{
		Partition: "train",
		Task:      "actor",
		BatchSize: 4, // per rank
		Ready:     engine.ReadySlice{0, 1, 2, 3, 4, 5, 6, 7},
		Tags: func(i uint64) engine.Tags {
			return engine.Tags{sampler.LengthTag: lengths[i]}
		},
	}
	for rank := range 2 {
		req.Options = engine.SamplingOptions{HasRank: true, DPRank: rank, BatchIndex: 0}
		sampled, _, err := s.Sample(req)
		fmt.Println(rank, sampled, err)
	}
	// Output:
	// 0 [0 1 4 5] <nil>
	// 1 [2 3 6 7] <nil>
}

func ExampleRankAware() {
	r := sampler.NewRankAware()
	req := engine.SampleRequest{Partition: "train", Task: "actor", BatchSize: 2, Ready: engine.ReadySlice{0, 1, 2, 3}}
	// Two peers of replica group 0 and one of group 1 ask for batch 0. (The
	// controller would have removed consumed rows from Ready in between.)
	for _, rank := range []int{0, 0, 1} {
		req.Options = engine.SamplingOptions{HasRank: true, DPRank: rank, BatchIndex: 0}
		sampled, _, _ := r.Sample(req)
		fmt.Println(rank, sampled)
		if rank == 0 {
			req.Ready = engine.ReadySlice{2, 3}
		}
	}
	// Output:
	// 0 [0 1]
	// 0 [0 1]
	// 1 [2 3]
}

// everyOther is a user's sampler: it returns every other ready row and
// consumes the rows it skipped as well.
type everyOther struct{}

func (everyOther) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if req.BatchSize < 0 {
		return nil, nil, fmt.Errorf("every other: batch size %d: %w", req.BatchSize, engine.ErrInvalid)
	}
	if req.BatchSize == 0 {
		return nil, nil, nil
	}
	req.Ready.Ascend(func(i uint64) bool {
		if len(consumed)%2 == 0 {
			sampled = append(sampled, i)
		}
		consumed = append(consumed, i)
		return len(sampled) < req.BatchSize
	})
	return sampled, consumed, nil
}

func Example_customSampler() {
	var s engine.Sampler = everyOther{}
	sampled, consumed, err := s.Sample(engine.SampleRequest{BatchSize: 3, Ready: engine.ReadySlice{0, 1, 2, 3, 4, 5, 6}})
	fmt.Println(sampled, consumed, err)
	// Output: [0 2 4] [0 1 2 3 4] <nil>
}
