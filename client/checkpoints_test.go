package client_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// checkpointNames returns n names in order: ck-00000, ck-00001, ….
func checkpointNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("ck-%05d", i)
	}
	return names
}

// pagesOf answers CHECKPOINTS as the controller does: the names after
// after, at most 1000 (the most a page holds), with next_after the last
// one listed while more follow.
func pagesOf(names []string) func(after string) ([]string, string) {
	return func(after string) ([]string, string) {
		i := sort.SearchStrings(names, after)
		if i < len(names) && names[i] == after {
			i++
		}
		page := names[i:min(i+1000, len(names))]
		if i+len(page) == len(names) {
			return page, ""
		}
		return page, page[len(page)-1]
	}
}

// RemoteMeta.Checkpoints asks page after page (after = the last
// next_after) until a page has no next_after. A server whose next_after
// does not advance is not asked again, and the listing is an error (not
// part of the list passed for all of it); a server from before pages,
// which answers everything with no next_after, is asked once.
func TestRemoteCheckpointsPages(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answer    func(after string) (names []string, next string)
		want      []string // names listed
		wantAfter []string // the after of each request
		wantErr   string   // in the error, if the listing fails
	}{
		{
			name:      "one page",
			answer:    pagesOf(checkpointNames(3)),
			want:      checkpointNames(3),
			wantAfter: []string{""},
		},
		{
			name:      "none",
			answer:    pagesOf(nil),
			want:      nil,
			wantAfter: []string{""},
		},
		{
			name:      "full pages",
			answer:    pagesOf(checkpointNames(2500)),
			want:      checkpointNames(2500),
			wantAfter: []string{"", "ck-00999", "ck-01999"},
		},
		{
			name: "exactly a page, then an empty one",
			answer: func(after string) ([]string, string) {
				if after == "" {
					return checkpointNames(1000), "ck-00999"
				}
				return nil, ""
			},
			want:      checkpointNames(1000),
			wantAfter: []string{"", "ck-00999"},
		},
		{
			name: "next_after repeats the after asked",
			answer: func(after string) ([]string, string) {
				if after == "" {
					return []string{"a", "b"}, "b"
				}
				return []string{"c"}, after
			},
			wantErr:   "next_after \"b\", which does not advance",
			wantAfter: []string{"", "b"},
		},
		{
			name: "next_after goes back",
			answer: func(after string) ([]string, string) {
				if after == "" {
					return []string{"a", "b"}, "b"
				}
				return []string{"c"}, "a"
			},
			wantErr:   "next_after \"a\", which does not advance",
			wantAfter: []string{"", "b"},
		},
		{
			name:      "an older server answers everything, with no next_after",
			answer:    func(string) ([]string, string) { return checkpointNames(1500), "" },
			want:      checkpointNames(1500),
			wantAfter: []string{""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu     sync.Mutex
				afters []string
			)
			srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
			srv.Handle(wire.OpCheckpoints, func(ctx context.Context, req *wire.Request, rw *wire.ReplyWriter) {
				var r wirepb.CheckpointsRequest
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
				names, next := tc.answer(r.After)
				reply := &wirepb.CheckpointsReply{NextAfter: next}
				for _, name := range names {
					reply.Checkpoints = append(reply.Checkpoints, &wirepb.CheckpointInfo{Name: name})
				}
				rw.Reply(reply, nil, nil)
			})
			r := dialFake(t, srv)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			list, err := r.Checkpoints(ctx)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, engine.ErrCorrupt)
				require.ErrorContains(t, err, tc.wantErr)
				require.Nil(t, list)
			} else {
				require.NoError(t, err)
			}
			var got []string
			for _, ci := range list {
				got = append(got, ci.Name)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("names listed (-want +got):\n%s", diff)
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff(tc.wantAfter, afters); diff != "" {
				t.Errorf("after of each request (-want +got):\n%s", diff)
			}
		})
	}
}

// dialFake serves srv, a controller a test stands in for, on a unix
// socket until cleanup, and dials it without retries.
func dialFake(t *testing.T, srv *wire.Server) *client.RemoteMeta {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "c.sock"))
	require.NoError(t, err)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return dialMeta(t, "unix://"+l.Addr().String(), client.RemoteConfig{RetryFor: -1})
}
