package stream

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// ctrlServer serves e's controller on a unix socket that the test can
// stop (the controller goes away: connections and the socket) and start
// again at the same address.
type ctrlServer struct {
	t    *testing.T
	e    *embedded.Cluster
	sock string
	mu   sync.Mutex
	srv  *controller.Server
	wg   sync.WaitGroup
}

func serveCtrl(t *testing.T, e *embedded.Cluster) *ctrlServer {
	s := &ctrlServer{t: t, e: e, sock: filepath.Join(t.TempDir(), "ctrl.sock")}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *ctrlServer) addr() string { return wire.FormatAddr("unix", s.sock) }

func (s *ctrlServer) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	os.Remove(s.sock)
	l, err := net.Listen("unix", s.sock)
	require.NoError(s.t, err)
	srv := controller.NewServer(s.e.Controller, controller.ServerConfig{})
	s.srv = srv
	s.wg.Go(func() { srv.Serve(l) })
}

func (s *ctrlServer) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	s.wg.Wait()
}

// remoteClient is a client of e's units whose controller is reached over
// the wire at s, repeating a lost call for only retryFor.
func remoteClient(t *testing.T, e *embedded.Cluster, s *ctrlServer, retryFor time.Duration) *client.Client {
	r, err := client.DialMeta(context.Background(), s.addr(), client.RemoteConfig{RetryFor: retryFor})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return clientOver(t, e, r)
}

// breakWithPrefetched runs a private loader over a done partition of 32
// rows with batches fetched ahead, stops the controller's server after the
// first micro-batch, while the prefetcher holds the next ones, and breaks
// out of the loop: the give-back of those batches meets no controller.
// stopped, if not nil, runs once the server is stopped (to bring it back
// later: a timer started before the stop could fire first on a loaded
// machine, and start a second server over the first). It returns the
// rows yielded.
func breakWithPrefetched(t *testing.T, l *Loader, s *ctrlServer, e *embedded.Cluster, stopped func()) []int64 {
	var got []int64
	for b, err := range l.All(context.Background()) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
		// The prefetcher took every other row.
		require.Eventually(t, func() bool { return consumedRows(t, e, "p") == 32 }, 10*time.Second, 5*time.Millisecond)
		s.stop()
		if stopped != nil {
			stopped()
		}
		break
	}
	return got
}

func consumedRows(t *testing.T, e *embedded.Cluster, part string) int {
	st, err := e.Client.ConsumptionStatus(context.Background(), part, "train")
	require.NoError(t, err)
	n := 0
	for _, c := range st.Consumed {
		if c {
			n++
		}
	}
	return n
}

func privateConfig() Config {
	cfg := config("p")
	cfg.Sampler, cfg.Prefetch = engine.SamplerSpec{Name: engine.SamplerSequential}, 16
	return cfg
}

// doneRemote returns a cluster whose partition "p" holds 32 rows and is
// marked done, its controller served on its own (to stop and start), and
// a client of it over that server.
func doneRemote(t *testing.T) (*embedded.Cluster, *ctrlServer, *client.Client) {
	t.Helper()
	return doneRemoteWith(t, embedded.DefaultConfig())
}

func doneRemoteWith(t *testing.T, cfg embedded.Config) (*embedded.Cluster, *ctrlServer, *client.Client) {
	t.Helper()
	e, err := embedded.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	produce(t, e.Client, "p", 0, 32, nil)
	require.NoError(t, e.Client.MarkDone(context.Background(), "p"))
	s := serveCtrl(t, e)
	return e, s, remoteClient(t, e, s, 50*time.Millisecond)
}

// A give-back of prefetched rows that meets a controller gone for a while
// (its server stopped, past the client's own repeats) is tried again until
// the controller is back: the rows reach the task's next consumer. It used
// to be dropped after one try, silently, and the rows reached no one.
func TestGiveBackRetriedWhileTheControllerIsAway(t *testing.T) {
	e, s, c := doneRemote(t)
	ctx := context.Background()
	l, err := New(c, privateConfig())
	require.NoError(t, err)
	l.giveBackTimeout, l.giveBackBackoff, l.giveBackTries = 100*time.Millisecond, 50*time.Millisecond, 20
	var back *time.Timer
	defer func() {
		if back != nil {
			back.Stop()
		}
	}()
	got := breakWithPrefetched(t, l, s, e, func() {
		back = time.AfterFunc(400*time.Millisecond, s.start) // the controller comes back
	})
	require.NoError(t, l.Err(), "the give-back succeeded once the controller was back")
	require.Equal(t, len(got), consumedRows(t, e, "p"), "the unyielded rows were given back")
	again, err := New(e.Client, privateConfig())
	require.NoError(t, err)
	got = append(got, flat(collect(t, ctx, again))...)
	require.Equal(t, upTo(32), got, "every row reaches a consumer")
}

// A give-back that fails for good (the controller stays away) is reported:
// Loader.Err returns it and it is logged. It used to be dropped silently.
// The rows are not lost: their fetches held them (Hold), so the
// controller gives them back once the holds outlive its TTL.
func TestGiveBackFailureReported(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.HeldFetchTTL = time.Second
	e, s, c := doneRemoteWith(t, ecfg)
	ctx := context.Background()
	var logged bytes.Buffer
	var logMu sync.Mutex
	cfg := privateConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil))
	l, err := New(c, cfg)
	require.NoError(t, err)
	l.giveBackTimeout, l.giveBackBackoff, l.giveBackTries = 100*time.Millisecond, 20*time.Millisecond, 3
	got := breakWithPrefetched(t, l, s, e, nil)
	err = l.Err()
	require.Error(t, err, "the failed give-back must be reported")
	require.ErrorContains(t, err, "give back")
	require.ErrorContains(t, err, "after 3 tries")
	logMu.Lock()
	require.Contains(t, logged.String(), "could not be given back")
	logMu.Unlock()
	// The next iteration starts clean, and gets the rows once the
	// controller gave them back.
	s.start()
	for b, err := range l.All(ctx) {
		require.NoError(t, err)
		got = append(got, values(t, b)...)
	}
	require.NoError(t, l.Err())
	slices.Sort(got)
	require.Equal(t, upTo(32), got, "every row reaches a consumer")
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// A client whose metadata service cannot acknowledge (a wrapper that
// forwards client.MetaService only) must not hold its fetches: nothing
// would ever settle them, so the loader's own next fetch would wait at
// the end for its rows, and the controller would give them back after
// the TTL, to be served again.
func TestLoaderHoldsNothingWithoutAcknowledge(t *testing.T) {
	ecfg := embedded.DefaultConfig()
	ecfg.Controller.HeldFetchTTL = 200 * time.Millisecond
	e, err := embedded.New(ecfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	ctx := context.Background()
	produce(t, e.Client, "p", 0, 8, nil)
	require.NoError(t, e.Client.MarkDone(ctx, "p"))
	c := clientOver(t, e, struct{ client.MetaService }{embedded.Meta(e.Controller, e.Units...)})
	cfg := privateConfig()
	cfg.Prefetch = 0
	l, err := New(c, cfg)
	require.NoError(t, err)
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var got []int64
	for b, err := range l.All(tctx) {
		require.NoError(t, err, "after rows %v", got)
		got = append(got, values(t, b)...)
	}
	require.Equal(t, upTo(8), got, "each row once")
	st, err := e.Client.ConsumptionStatus(ctx, "p", "train")
	require.NoError(t, err)
	require.Empty(t, st.Held)
}
