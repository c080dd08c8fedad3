package sampler

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// A total_lengths tag so large that a group's or a rank's sum overflows
// int64: the token budget put the group in (its sum wrapped negative)
// and then more groups beside it, far past the budget; the balanced
// sampler failed in Karmarkar–Karp on a "negative length" naming no row.
// Such a length is refused, naming the row and the tag.
func TestHugeLengthRefused(t *testing.T) {
	huge := int64(math.MaxInt64/2 + 1)
	tags := lengthTags(map[uint64]any{0: huge, 1: huge, 2: 1, 3: 1})
	ready := engine.ReadySlice{0, 1, 2, 3}

	tb, err := NewTokenBudget(2, 1)
	require.NoError(t, err)
	got, _, err := tb.Sample(engine.SampleRequest{Partition: "p", Task: "t", TokenBudget: 10, Ready: ready,
		Tags: tags, Options: ranked(0, 0), Final: true})
	require.Error(t, err, "token budget 10 gave rank 0 rows %v", got)
	assert.ErrorIs(t, err, engine.ErrInvalid)
	assert.ErrorContains(t, err, "row 0")
	assert.ErrorContains(t, err, LengthTag)

	sb := newSeqlen(t, 2, 1)
	got, _, err = sb.Sample(engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 4, Ready: ready,
		Tags: tags, Options: ranked(0, 0)})
	require.Error(t, err, "seqlen_balanced gave rank 0 rows %v", got)
	assert.ErrorIs(t, err, engine.ErrInvalid)
	assert.ErrorContains(t, err, "row 0")
	assert.ErrorContains(t, err, LengthTag)

	// The largest length taken is fine, and a group of it goes alone.
	tags = lengthTags(map[uint64]any{0: MaxLength, 1: MaxLength, 2: 1, 3: 1})
	got, _, err = tb.Sample(engine.SampleRequest{Partition: "q", Task: "t", TokenBudget: 10, Ready: ready,
		Tags: tags, Options: ranked(0, 0), Final: true})
	require.NoError(t, err)
	assert.Equal(t, []uint64{0, 1}, got, "a group longer than the budget goes alone")
}
