package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// TestStartWithAStaleGenRefused: a loader reads a micro-batch of one
// partition, and its Next, with that partition's generation, is changed
// by hand to another step (to skip a step, or to replay one) but keeps the
// generation. New refuses it, naming the step, its partition, the
// generation and the partition the generation is of. It used to start,
// and the partition at the new step, fetched under another partition's
// generation, ended at once as a cleared one: the loader silently skipped
// it (and went on with the next).
func TestStartWithAStaleGenRefused(t *testing.T) {
	e := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parts := []string{"p", "q", "r"}
	for i, p := range parts {
		produce(t, e.Client, p, 100*i, 8, nil)
		require.NoError(t, e.Client.MarkDone(ctx, p))
	}
	// at reads one micro-batch at step and returns the loader's Next.
	at := func(step int) Position {
		cfg := config(parts...)
		cfg.Start = Position{Step: step}
		l, err := New(e.Client, cfg)
		require.NoError(t, err)
		for b, err := range l.All(ctx) {
			require.NoError(t, err)
			require.Equal(t, parts[step], b.Partition)
			break
		}
		pos := l.Next()
		require.NotZero(t, pos.Gen, "Next names the generation of the partition it read: %+v", pos)
		return pos
	}
	for _, tc := range []struct {
		name     string
		from, to int
	}{{"skip", 0, 1}, {"replay", 1, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			pos := at(tc.from)
			pos.Step, pos.Index = tc.to, 0
			cfg := config(parts...)
			cfg.Start = pos
			l, err := New(e.Client, cfg)
			if err == nil {
				var read []string
				for b, err := range l.All(ctx) {
					require.NoError(t, err)
					read = append(read, b.Partition)
				}
				t.Fatalf("started at %+v (step %d is %q): read %v", pos, tc.to, parts[tc.to], read)
			}
			require.ErrorIs(t, err, engine.ErrInvalid)
			for _, want := range []string{
				fmt.Sprintf("step %d is partition %q", tc.to, parts[tc.to]),
				fmt.Sprintf("generation %d is of partition %q", pos.Gen, parts[tc.from]),
			} {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
	// The position as Next gave it, or as a loader before GenOf gave it,
	// or with Step changed and the generation zeroed, starts.
	old := at(0)
	old.GenOf = ""
	for _, pos := range []Position{at(0), old, {Step: 1}} {
		cfg := config(parts...)
		cfg.Start = pos
		_, err := New(e.Client, cfg)
		require.NoError(t, err, "start at %+v", pos)
	}
}
