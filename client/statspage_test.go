package client_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// AllStats asks STATS_PAGE page after page and gives every partition
// once; a next_after that does not advance, or a page whose partitions
// are not in order after the one asked for (one listed twice), is an
// error, not a short or doubled list; a controller without STATS_PAGE (CODE_NOT_SUPPORTED) is asked
// PARTITIONS, then STATS per partition, and a partition it says was
// cleared meanwhile is left out.
func TestAllStatsPages(t *testing.T) {
	names := checkpointNames(2500) // any sorted names
	paged := func(after string) ([]string, string) {
		i := sort.SearchStrings(names, after)
		if i < len(names) && names[i] == after {
			i++
		}
		page := names[i:min(i+1000, len(names))]
		if i+1000 < len(names) {
			return page, page[len(page)-1]
		}
		return page, ""
	}
	for _, tc := range []struct {
		name      string
		answer    func(after string) ([]string, string) // nil: no STATS_PAGE (the server answers CODE_NOT_SUPPORTED)
		want      []string
		wantErr   string
		wantOps   map[wire.Op]int
		wantAfter []string
	}{
		{
			name: "pages", answer: paged, want: names,
			wantOps:   map[wire.Op]int{wire.OpStatsPage: 3},
			wantAfter: []string{"", names[999], names[1999]},
		},
		{
			name: "next_after does not advance",
			answer: func(after string) ([]string, string) {
				if after == "" {
					return []string{"a", "b"}, "b"
				}
				return []string{"c"}, "b"
			},
			wantErr:   `next_after "b", which does not advance`,
			wantOps:   map[wire.Op]int{wire.OpStatsPage: 2},
			wantAfter: []string{"", "b"},
		},
		{
			name: "a page repeats a partition",
			answer: func(after string) ([]string, string) {
				if after == "" {
					return []string{"a", "b"}, "b"
				}
				return []string{"b", "c"}, ""
			},
			wantErr:   `partition "b" after "b"`,
			wantOps:   map[wire.Op]int{wire.OpStatsPage: 2},
			wantAfter: []string{"", "b"},
		},
		{
			name: "an older controller: PARTITIONS, then STATS each",
			want: []string{"a", "c"},
			// "b" is cleared between the listing and its STATS.
			wantOps: map[wire.Op]int{wire.OpPartitions: 1, wire.OpStats: 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu     sync.Mutex
				ops    = map[wire.Op]int{}
				afters []string
			)
			count := func(op wire.Op) {
				mu.Lock()
				ops[op]++
				mu.Unlock()
			}
			srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
			if tc.answer != nil {
				srv.Handle(wire.OpStatsPage, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
					count(wire.OpStatsPage)
					var r wirepb.StatsPageRequest
					if err := req.Decode(&r); err != nil {
						rw.Error(err)
						return
					}
					mu.Lock()
					afters = append(afters, r.After)
					n := len(afters)
					mu.Unlock()
					if n > 10 { // the client loops: end it with an error
						rw.Error(fmt.Errorf("request %d, after %q: %w", n, r.After, engine.ErrInvalid))
						return
					}
					page, next := tc.answer(r.After)
					reply := &wirepb.StatsPageReply{NextAfter: next}
					for _, p := range page {
						reply.Partitions = append(reply.Partitions, &wirepb.PartitionStats{Partition: p, Rows: 1})
					}
					rw.Reply(reply, nil, nil)
				})
			}
			srv.Handle(wire.OpPartitions, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
				count(wire.OpPartitions)
				rw.Reply(&wirepb.PartitionsReply{Partitions: []string{"a", "b", "c"}}, nil, nil)
			})
			srv.Handle(wire.OpStats, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
				count(wire.OpStats)
				var r wirepb.PartitionRequest
				if err := req.Decode(&r); err != nil {
					rw.Error(err)
					return
				}
				if r.Partition == "b" {
					rw.Error(fmt.Errorf("partition %q: %w", r.Partition, engine.ErrNotFound))
					return
				}
				rw.Reply(&wirepb.PartitionStats{Partition: r.Partition, Rows: 1}, nil, nil)
			})
			r := dialFake(t, srv)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			all, err := r.AllStats(ctx)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, engine.ErrCorrupt)
				require.ErrorContains(t, err, tc.wantErr)
				require.Nil(t, all)
			} else {
				require.NoError(t, err)
				var got []string
				for _, st := range all {
					got = append(got, st.Partition)
					require.Equal(t, 1, st.Rows, st.Partition)
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("partitions (-want +got):\n%s", diff)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff(tc.wantOps, ops); diff != "" {
				t.Errorf("requests by op (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantAfter, afters); diff != "" {
				t.Errorf("pages asked for (-want +got):\n%s", diff)
			}
		})
	}
}
