package sampler

import (
	"github.com/tqgo/tq/engine"
)

var (
	_ engine.CachingSampler    = (*TokenBudget)(nil)
	_ engine.JournaledSampler  = (*TokenBudget)(nil)
	_ engine.RowForgetter      = (*TokenBudget)(nil)
	_ engine.TaskForgetter     = (*TokenBudget)(nil)
	_ engine.SplitBatchDropper = (*TokenBudget)(nil)
)

const tokenBudgetKind = "token_budget"

// TokenBudget makes batches bounded by a number of tokens rather than a
// number of rows (upstream's StreamingTokenBudgetSampler, get_meta with
// token_budget=N): SampleRequest.TokenBudget is the budget of each of
// dpSize DP ranks, a row's tokens are its [LengthTag] tag (1 when absent),
// and prompt groups (n rows put together, as [GRPO] finds them) stay whole.
//
// The first call for a (partition, task, BatchIndex) takes the ready
// groups as [GRPO] finds them and puts each into the rank with the fewest
// tokens so far (of those tied, the fewest rows: a rank is left empty only
// by a final batch), as long as it fits that rank's budget (and, with a
// positive BatchSize, its row limit); the first group that does not fit
// closes the batch. Every rank's part thus stays within the budget, and
// the parts are balanced greedily. A group longer than the whole budget
// goes alone into an empty rank (it could never fit). When the ready rows
// run out before the batch closes, TokenBudget returns no rows ("not
// enough yet") unless the request is final (SampleRequest.Final: the
// partition is done), when it takes what there is. The batch is cached
// like [SeqlenBalanced]'s: every rank of the batch index gets its part,
// and its peers the same.
// A rank whose part was cleared before it fetched it gets a part of its
// own, filled the same way from the rows ready then as if it were the
// only rank; so does a rank whose part the controller dropped
// ([engine.BatchDropper]: the rank never fetched it). At the end of a done
// partition, with nothing ready for such a part, the controller moves the
// rank's part of a later batch that it never fetched into the batch it
// asks for (MovePart, as [SeqlenBalanced]'s).
//
// TokenBudget is safe for concurrent use.
type TokenBudget struct {
	partsCache
}

// NewTokenBudget returns a [TokenBudget] sampler for prompt groups of n
// rows and dpSize DP ranks. Both must be positive; otherwise the error
// wraps [engine.ErrInvalid].
func NewTokenBudget(n, dpSize int) (*TokenBudget, error) {
	if n <= 0 {
		return nil, invalid(tokenBudgetKind, "group size %d is not positive", n)
	}
	if dpSize <= 0 {
		return nil, invalid(tokenBudgetKind, "dp size %d is not positive", dpSize)
	}
	return &TokenBudget{partsCache{kind: tokenBudgetKind, n: n, dpSize: dpSize}}, nil
}

// Sample implements [engine.Sampler]. It returns an error wrapping
// [engine.ErrInvalid] when the request has no rank, a DPRank that is
// negative or not below the dp size, a negative BatchSize, no positive
// TokenBudget, a BatchSize that is not whole groups,
// a row with a negative length, or a ready set out of order.
func (t *TokenBudget) Sample(req engine.SampleRequest) (sampled, consumed []uint64, err error) {
	if err := t.Check(req); err != nil {
		return nil, nil, err
	}
	opts := req.Options
	parts, ok := t.cache.get(req.Partition, batchKey{task: req.Task, batch: opts.BatchIndex})
	fresh := !ok
	if !ok {
		parts, err = t.fill(req, t.dpSize)
		if err != nil || parts == nil {
			return nil, nil, err
		}
		if parts, fresh, err = t.add(req, parts); err != nil {
			return nil, nil, err
		}
	} else if len(parts[opts.DPRank]) == 0 {
		one, err := t.fill(req, 1)
		if err != nil {
			return nil, nil, err
		}
		if len(one) > 0 {
			if parts, err = t.refill(req, parts, one[0]); err != nil {
				return nil, nil, err
			}
		}
	}
	sampled, consumed = answer(parts, opts.DPRank, fresh)
	return sampled, consumed, nil
}

// Check returns the error [TokenBudget.Sample] returns for req whatever
// rows are ready (nil when there is none), so that a fetch it refuses
// fails before enough rows are ready.
func (t *TokenBudget) Check(req engine.SampleRequest) error {
	if err := checkRank(tokenBudgetKind, req.Options, t.dpSize); err != nil {
		return err
	}
	if req.TokenBudget <= 0 {
		return invalid(tokenBudgetKind, "token budget %d is not positive (the request's TokenBudget)", req.TokenBudget)
	}
	return checkBatch(tokenBudgetKind, req.BatchSize, t.n)
}

// fill builds a batch for ranks ranks: nil when it does not close with the
// rows ready and the request is not final.
func (t *TokenBudget) fill(req engine.SampleRequest, ranks int) ([][]uint64, error) {
	if req.Ready == nil || req.Ready.Len() == 0 {
		return nil, nil
	}
	parts := make([][]uint64, ranks)
	tokens := make([]int64, ranks)
	closed, placedGroups := false, 0
	var lengthErr error
	err := eachGroup(tokenBudgetKind, req.Ready, req.Origin, t.n, func(group []uint64) bool {
		lengths, err := rowLengths(tokenBudgetKind, group, req.Tags)
		if err != nil {
			lengthErr = err
			return false
		}
		var size int64
		for _, l := range lengths {
			size += l
		}
		// The rank with the fewest tokens, of those tied the fewest rows:
		// groups of no tokens must not all go to the first rank while
		// another is left empty.
		least := 0
		for r := range tokens {
			if tokens[r] < tokens[least] || tokens[r] == tokens[least] && len(parts[r]) < len(parts[least]) {
				least = r
			}
		}
		fits := tokens[least]+size <= req.TokenBudget &&
			(req.BatchSize == 0 || len(parts[least])+t.n <= req.BatchSize)
		if !fits && len(parts[least]) > 0 {
			closed = true
			return false
		}
		parts[least] = append(parts[least], group...)
		tokens[least] += size
		placedGroups++
		return true
	})
	if err == nil {
		err = lengthErr
	}
	if err != nil {
		return nil, err
	}
	if placedGroups == 0 || (!closed && !req.Final) {
		return nil, nil
	}
	return parts, nil
}

// Cached implements [engine.CachingSampler].
func (t *TokenBudget) Cached(partition, task string, opts engine.SamplingOptions) bool {
	return opts.HasRank && opts.DPRank >= 0 && opts.DPRank < t.dpSize &&
		t.cache.has(partition, batchKey{task: task, batch: opts.BatchIndex})
}
