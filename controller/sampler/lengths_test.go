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

// A total_lengths tag that is there but not an integer (a string, a
// fraction, a bool) counted as one token with no word of it: a producer
// that tagged "512" or 511.5 had its rows balanced as if each were one
// token long. It is refused, naming the row and the tag; a missing tag
// (or a null) still counts as 1.
func TestNonIntegerLengthRefused(t *testing.T) {
	for _, v := range []any{"512", 511.5, true, math.NaN(), uint64(math.MaxUint64), []any{1}} {
		tags := lengthTags(map[uint64]any{0: 4, 1: 4, 2: v, 3: 4})
		ready := engine.ReadySlice{0, 1, 2, 3}
		tb, err := NewTokenBudget(1, 2)
		require.NoError(t, err)
		got, _, err := tb.Sample(engine.SampleRequest{Partition: "p", Task: "t", TokenBudget: 100, Ready: ready,
			Tags: tags, Options: ranked(0, 0), Final: true})
		require.Error(t, err, "token budget, length %#v: rank 0 got %v", v, got)
		assert.ErrorIs(t, err, engine.ErrInvalid)
		assert.ErrorContains(t, err, "row 2")
		assert.ErrorContains(t, err, LengthTag)

		got, _, err = newSeqlen(t, 1, 2).Sample(engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2, Ready: ready,
			Tags: tags, Options: ranked(0, 0)})
		require.Error(t, err, "seqlen_balanced, length %#v: rank 0 got %v", v, got)
		assert.ErrorIs(t, err, engine.ErrInvalid)
		assert.ErrorContains(t, err, "row 2")
	}
	tags := lengthTags(map[uint64]any{0: 4, 1: 4, 2: nil, 3: 512.0})
	got, _, err := newSeqlen(t, 1, 2).Sample(engine.SampleRequest{Partition: "p", Task: "t", BatchSize: 2,
		Ready: engine.ReadySlice{0, 1, 2, 3, 4}, Tags: tags, Options: ranked(0, 0)})
	require.NoError(t, err, "a null, a missing tag and an integral float are lengths")
	assert.NotEmpty(t, got)
}
