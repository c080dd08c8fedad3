package sampler

import (
	"github.com/tqgo/tq/engine"
)

var _ engine.Sampler = (*Sequential)(nil)

// Sequential returns the first BatchSize ready rows, in the order the ready
// set yields them (ascending global index), and consumes exactly those. With
// fewer rows ready it returns all of them. It walks only as far into the
// ready set as it needs, so a call costs O(BatchSize) however many rows are
// ready.
//
// Sequential has no state and is safe for concurrent use.
type Sequential struct{}

// NewSequential returns a [Sequential] sampler.
func NewSequential() *Sequential { return &Sequential{} }

// Sample implements [engine.Sampler]. A zero BatchSize returns no rows; a
// negative one returns an error wrapping [engine.ErrInvalid] (the reference
// implementation follows Python slicing there instead).
func (*Sequential) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if req.BatchSize < 0 {
		return nil, nil, invalid("sequential", "negative batch size %d", req.BatchSize)
	}
	if req.BatchSize == 0 || req.Ready == nil {
		return nil, nil, nil
	}
	n := min(req.BatchSize, req.Ready.Len())
	if n <= 0 {
		return nil, nil, nil
	}
	// One allocation for both lists: sampled fills buf[:n], consumed is a
	// copy in buf[n:].
	buf := make([]uint64, 0, 2*n)
	req.Ready.Ascend(func(i uint64) bool {
		buf = append(buf, i)
		return len(buf) < n
	})
	got := len(buf)
	if got == 0 {
		return nil, nil, nil
	}
	buf = append(buf, buf[:got]...)
	return buf[:got:got], buf[got:], nil
}
