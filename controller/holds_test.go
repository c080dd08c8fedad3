package controller

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// heldFetch fetches n rows of p for task t under key, held.
func heldFetch(t *testing.T, c *Controller, key string, n int) *engine.BatchMeta {
	t.Helper()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n, Key: key, Hold: true})
	require.NoError(t, err)
	require.Equal(t, n, m.Len())
	return m
}

// doneWith makes partition p of n produced rows, marked done.
func doneWith(t *testing.T, c *Controller, n int) {
	t.Helper()
	m := insert(t, c, "p", n, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	require.NoError(t, c.MarkDone("p"))
}

// peerFetch is another consumer's fetch of what is left, waiting up to d.
func peerFetch(c *Controller, d time.Duration) (*engine.BatchMeta, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 8, Wait: true})
}

// A held fetch's rows may come back, so the task's other fetches are not
// told the partition is done until the holder settles them: acknowledged,
// the peer ends; given back, the peer gets them.
func TestHeldRowsKeepPeersFromEnding(t *testing.T) {
	for _, settle := range []string{"acknowledge", "give back"} {
		t.Run(settle, func(t *testing.T) {
			c := newController(t, DefaultConfig())
			doneWith(t, c, 6)
			held := heldFetch(t, c, "a", 4)
			rest, err := peerFetch(c, time.Second)
			require.NoError(t, err)
			require.Equal(t, 2, rest.Len(), "the short last batch of what nobody holds")

			st, err := c.ConsumptionStatus("p", "t")
			require.NoError(t, err)
			assert.Equal(t, 6, trues(st.Consumed))
			assert.Equal(t, held.Indexes, st.Held, "held rows may come back")
			assert.False(t, c.CheckConsumption("p", "t"), "not consumed for good while rows are held")
			ps, err := c.Stats("p")
			require.NoError(t, err)
			assert.Equal(t, []engine.TaskStats{{Task: "t", Consumed: 6, Progress: 1, Held: 4}}, ps.Tasks)
			_, err = peerFetch(c, 50*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "not done while rows are held")
			m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 8})
			require.NoError(t, err)
			require.True(t, m.Empty(), "a fetch without wait: nothing yet, not the end")

			type result struct {
				m   *engine.BatchMeta
				err error
			}
			waiting := make(chan result, 1)
			go func() {
				m, err := peerFetch(c, 10*time.Second)
				waiting <- result{m, err}
			}()
			time.Sleep(20 * time.Millisecond)
			if settle == "acknowledge" {
				require.NoError(t, c.Acknowledge("p", "t", "a"))
				require.NoError(t, c.Acknowledge("p", "t", "a"), "idempotent")
				r := <-waiting
				require.ErrorIs(t, r.err, engine.ErrDone, "the waiting peer ends once the rows are kept")
				assert.True(t, c.CheckConsumption("p", "t"))
				return
			}
			require.NoError(t, c.Unconsume("p", "t", "a"))
			r := <-waiting
			require.NoError(t, r.err)
			assert.ElementsMatch(t, held.Indexes, r.m.Indexes, "the waiting peer gets the rows given back")
			require.ErrorIs(t, c.Acknowledge("p", "t", "a"), engine.ErrNotFound, "rows given back are not the holder's to keep")
		})
	}
}

// A holder that never settles (it died) holds its peers only for the TTL:
// then the controller gives its rows back, and its late acknowledgment is
// refused.
func TestHeldFetchExpires(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HeldFetchTTL = 100 * time.Millisecond
	c := newController(t, cfg)
	doneWith(t, c, 4)
	// Timed from before the hold began: its TTL cannot end sooner, however
	// late this goroutine runs after the fetch.
	start := time.Now()
	held := heldFetch(t, c, "a", 4)
	m, err := peerFetch(c, 10*time.Second)
	require.NoError(t, err, "a waiting fetch wakes when the hold expires")
	assert.GreaterOrEqual(t, time.Since(start), cfg.HeldFetchTTL)
	assert.ElementsMatch(t, held.Indexes, m.Indexes)
	err = c.Acknowledge("p", "t", "a")
	require.ErrorIs(t, err, engine.ErrNotFound)
	require.ErrorContains(t, err, "given back")
	_, err = peerFetch(c, time.Second)
	require.ErrorIs(t, err, engine.ErrDone)
}

func TestHoldBadInput(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 4)
	ctx := context.Background()
	_, err := c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Hold: true})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "needs a fetch key")
	heldFetch(t, c, "a", 1)
	require.ErrorIs(t, c.Acknowledge("p", "other", "a"), engine.ErrInvalid, "another task's key")
	require.ErrorIs(t, c.Acknowledge("p", "", "a"), engine.ErrInvalid)
	require.ErrorIs(t, c.Acknowledge("p", "t", ""), engine.ErrInvalid)
	require.ErrorIs(t, c.Acknowledge("p", "t", string(make([]byte, 65))), engine.ErrInvalid)
	require.NoError(t, c.Acknowledge("p", "t", "never fetched"))
	require.NoError(t, c.Acknowledge("nowhere", "t", "a"))
	// A fetch without hold has nothing to acknowledge.
	_, err = c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "b"})
	require.NoError(t, err)
	require.NoError(t, c.Acknowledge("p", "t", "b"))
}

// A batch kept for a DP group is the group's: a held fetch of it holds
// nothing back from the other groups' end.
func TestKeptBatchIsNotHeld(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 4)
	ra := specFetch(engine.SamplerSpec{Name: engine.SamplerRankAware}, 0, 0, 4)
	ra.Key, ra.Hold = "a", true
	m, err := c.Fetch(context.Background(), ra)
	require.NoError(t, err)
	require.Equal(t, 4, m.Len())
	other := specFetch(engine.SamplerSpec{Name: engine.SamplerRankAware}, 1, 0, 4)
	_, err = c.Fetch(context.Background(), other)
	require.ErrorIs(t, err, engine.ErrDone)
}

// Holds survive a restart, from the log and from a snapshot: the peer
// still waits, the holder's acknowledgment still ends it, and a hold
// given back before the crash stays given back.
func TestHoldsSurviveRestart(t *testing.T) {
	for _, snap := range []bool{false, true} {
		name := "log"
		if snap {
			name = "snapshot"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, DefaultConfig())
			doneWith(t, c, 6)
			heldFetch(t, c, "a", 2)
			heldFetch(t, c, "b", 2)
			heldFetch(t, c, "c", 2)
			require.NoError(t, c.Acknowledge("p", "t", "b"))
			require.NoError(t, c.Unconsume("p", "t", "c"))
			if snap {
				require.NoError(t, c.snapshot())
			}
			want := stateBytes(t, c)
			crash(t, c)

			c = openDurable(t, dir, DefaultConfig())
			t.Cleanup(func() { c.Close() })
			require.Equal(t, want, stateBytes(t, c))
			back, err := peerFetch(c, time.Second)
			require.NoError(t, err)
			require.Equal(t, 2, back.Len(), "c's rows, given back before the crash")
			_, err = peerFetch(c, 50*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "a's rows are still held")
			require.ErrorIs(t, c.Acknowledge("p", "t", "c"), engine.ErrNotFound)
			require.NoError(t, c.Acknowledge("p", "t", "b"))
			require.NoError(t, c.Acknowledge("p", "t", "a"))
			_, err = peerFetch(c, time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

// Resetting the task's consumption ends its holds: the rows are the new
// round's.
func TestResetEndsHolds(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 2)
	heldFetch(t, c, "a", 2)
	require.NoError(t, c.ResetConsumption("p", "t"))
	m, err := peerFetch(c, time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, m.Len())
	_, err = peerFetch(c, time.Second)
	require.ErrorIs(t, err, engine.ErrDone, "the reset hold holds nothing")
	require.NoError(t, c.Acknowledge("p", "t", "a"))
}

// A hold that expired while nobody fetched is given back by the next look
// at the task's consumption (ConsumptionStatus, or CheckConsumption, the
// first to look after the TTL): that look must report the rows given back
// as not consumed, not as consumed and no longer held.
func TestConsumptionSeesExpiredHold(t *testing.T) {
	expired := func(t *testing.T) *Controller {
		cfg := DefaultConfig()
		cfg.HeldFetchTTL = 20 * time.Millisecond
		c := newController(t, cfg)
		doneWith(t, c, 4)
		heldFetch(t, c, "a", 4)
		time.Sleep(50 * time.Millisecond)
		return c
	}
	t.Run("status", func(t *testing.T) {
		c := expired(t)
		st, err := c.ConsumptionStatus("p", "t")
		require.NoError(t, err)
		assert.Empty(t, st.Held)
		assert.Equal(t, 0, trues(st.Consumed), "the expired hold's rows are back")
		m, err := peerFetch(c, time.Second)
		require.NoError(t, err)
		require.Equal(t, 4, m.Len())
	})
	t.Run("check", func(t *testing.T) {
		assert.False(t, expired(t).CheckConsumption("p", "t"), "the rows were given back, nobody consumed them")
	})
}

// A held fetch lives until it is settled, however many keyed fetches (and
// give-backs) come after it: pushed out of the partition's fetch table by
// its bound, its acknowledgment would find nothing to settle, and the
// hold would outlive it, holding the task's peers and then giving back
// rows its caller kept. The hold never expires: the 65,536 calls may
// take any time (seconds under -race on a loaded machine), and the checks
// below need no TTL to see a hold that outlived its entry (still held,
// and the peer not told the partition is done).
func TestHoldOutlivesFetchTableBound(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HeldFetchTTL = -1 // never
	c := newController(t, cfg)
	doneWith(t, c, 4)
	held := heldFetch(t, c, "a", 4)
	for i := range maxFetchKeys {
		require.NoError(t, c.Unconsume("p", "t", fmt.Sprintf("k%d", i)))
	}
	require.NoError(t, c.Acknowledge("p", "t", "a"))
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	assert.Empty(t, st.Held, "the hold was settled")
	_, err = peerFetch(c, 2*time.Second)
	require.ErrorIs(t, err, engine.ErrDone, "the rows were kept: got %v", held.Indexes)
}

// A held fetch whose holder process exited (a killed loader, a DataLoader
// worker its parent stopped) no longer holds its peers at the end of a
// done partition for the held-fetch TTL: a fetch waiting there for the
// rows has them given back within about a second. While the holder
// lives, or when it is unknown, the fetch waits as before.
func TestHeldRowsOfAnExitedHolderGoBack(t *testing.T) {
	c := newController(t, Config{})
	doneWith(t, c, 6)
	heldFetch(t, c, "u", 2) // held for a process the controller does not know
	holder := exec.Command("sleep", "60")
	require.NoError(t, holder.Start())
	defer holder.Process.Kill()
	m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
		Key: "k", Hold: true, HolderPID: int32(holder.Process.Pid)})
	require.NoError(t, err)
	require.Equal(t, 4, m.Len())

	_, err = peerFetch(c, 1500*time.Millisecond)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the holder lives: its rows may come back")

	require.NoError(t, holder.Process.Kill())
	holder.Wait() // reaped: a zombie reads as alive
	start := time.Now()
	got, err := peerFetch(c, 10*time.Second)
	require.NoError(t, err)
	assert.Equal(t, m.Indexes, got.Indexes, "the exited holder's rows")
	assert.Less(t, time.Since(start), 5*time.Second, "given back at the next look, not after the TTL")
	require.ErrorIs(t, c.Acknowledge("p", "t", "k"), engine.ErrNotFound, "the holder's rows went to another")
	_, err = peerFetch(c, 1500*time.Millisecond)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the unknown holder's rows wait for the TTL")
}

// The holder's process is the peer of the controller's unix socket: a
// client process that made a held fetch there and was killed (SIGKILL:
// it settles nothing) has its rows given back to a fetch waiting at the
// end, long before the TTL.
func TestHeldFetchOfAKilledClientProcessGoesBack(t *testing.T) {
	if addr := os.Getenv("TQ_HELD_CLIENT_ADDR"); addr != "" {
		heldClientProcess(addr, os.Getenv("TQ_HELD_CLIENT_ID")) // the child: never returns
	}
	// Over the unix socket the controller knows the client's pid; over
	// TCP, as from another host, the id the client named itself with.
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) { killHeldClient(t, network) })
	}
}

// killHeldClient runs heldClientProcess, over network, then kills it: its
// rows go back to a waiting peer within seconds.
func killHeldClient(t *testing.T, network string) {
	c := newController(t, Config{HeldClientGrace: 200 * time.Millisecond})
	doneWith(t, c, 4)
	_, addr := startServer(t, c, ServerConfig{}, network)
	id := ""
	if network == "tcp" {
		id = "0123456789abcdef"
	}
	child := startHeldClient(t, nil, addr, id)

	_, err := peerFetch(c, time.Second)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the client lives: its rows may come back")
	givenBackOnKill(t, c, child, seq(0, 4))
}

// givenBackOnKill kills holder, a client process that holds rows of "p"
// for task "t", and checks that a fetch waiting at the end gets want soon
// after: at the controller's next look, not after the held-fetch TTL.
func givenBackOnKill(t *testing.T, c *Controller, holder *exec.Cmd, want []uint64) {
	t.Helper()
	require.NoError(t, holder.Process.Kill())
	holder.Wait()
	start := time.Now()
	got, err := peerFetch(c, 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, want, got.Indexes)
	require.Less(t, time.Since(start), 5*time.Second, "given back at the next look, not after the TTL")
}

// startHeldClient runs heldClientProcess (through wrapper, if any) against
// the controller at addr, as client id, and returns once it holds every
// row of "p"; it is killed when the test ends.
func startHeldClient(t *testing.T, wrapper []string, addr, id string) *exec.Cmd {
	t.Helper()
	argv := append(slices.Clone(wrapper), os.Args[0], "-test.run=^TestHeldFetchOfAKilledClientProcessGoesBack$", "-test.count=1")
	child := exec.Command(argv[0], argv[1:]...)
	child.Env = append(os.Environ(), "TQ_HELD_CLIENT_ADDR="+addr, "TQ_HELD_CLIENT_ID="+id)
	out, err := child.StdoutPipe()
	require.NoError(t, err)
	child.Stderr = os.Stderr
	require.NoError(t, child.Start())
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "the child's report")
	require.Equal(t, "held 4\n", line)
	return child
}

// A client whose host drops off the network (it crashed, or its link went
// down) closes nothing: the controller takes it for gone once the host
// has not answered for the peer timeout (TCP keepalive and
// TCP_USER_TIMEOUT on its connection, wire.ServerConfig.PeerTimeout),
// and gives back what it held after the grace, as for a client that
// closed its connections — not after the held-fetch TTL (10 minutes).
func TestHeldFetchOfAHostThatDroppedOffGoesBack(t *testing.T) {
	g := testenv.NewGuest(t)
	c := newController(t, Config{HeldClientGrace: 200 * time.Millisecond})
	doneWith(t, c, 4)
	l, err := net.Listen("tcp", net.JoinHostPort(g.HostIP, "0"))
	require.NoError(t, err)
	s := NewServer(c, ServerConfig{PeerTimeout: 2 * time.Second})
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	startHeldClient(t, g.In(), wire.FormatAddr("tcp", l.Addr().String()), "0123456789abcdef")

	_, err = peerFetch(c, 3*time.Second)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the client's host answers: its rows may come back")
	g.Unplug(t)
	start := time.Now()
	got, err := peerFetch(c, 15*time.Second)
	require.NoError(t, err, "the rows of a client whose host is gone")
	assert.Equal(t, seq(0, 4), got.Indexes)
	t.Logf("given back %v after the host dropped off", time.Since(start).Round(time.Millisecond))
}

// heldClientProcess fetches every row of "p" for task "t", held, through
// the controller at addr, as client id (if not ""), says so on stdout and
// waits to be killed.
func heldClientProcess(addr, id string) {
	ctx := context.Background()
	conn, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client", ClientId: []byte(id)}, wire.ConnConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	var reply wirepb.MetaReply
	err = conn.Do(ctx, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: []byte("k"), Hold: true}, nil, &reply, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(2)
	}
	fmt.Printf("held %d\n", len(reply.GetMeta().GetIndexes()))
	select {}
}

// A held fetch's holder pid is not logged: replayed, the hold has none
// and waits for the TTL, counted from the restart. The TTL's give-back of
// a replayed hold is logged: a second restart finds it given back.
func TestReplayedHoldGivenBackByTheTTL(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{HeldFetchTTL: 200 * time.Millisecond}
			c := openDurable(t, dir, cfg)
			doneWith(t, c, 4)
			m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
				Key: "k", Hold: true, HolderPID: int32(os.Getpid())})
			require.NoError(t, err)
			require.NoError(t, c.WaitDurable(context.Background()))
			want := stateBytes(t, c)
			way.stop(t, c)

			c = openDurable(t, dir, cfg)
			require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			require.Zero(t, c.parts["p"].fetches.m["k"].pid, "the pid is not logged")
			got, err := peerFetch(c, 5*time.Second)
			require.NoError(t, err, "the replayed hold is given back by the TTL")
			require.Equal(t, m.Indexes, got.Indexes)
			require.NoError(t, c.WaitDurable(context.Background()))
			want = stateBytes(t, c)
			way.stop(t, c)

			c = openDurable(t, dir, cfg)
			defer c.Close()
			require.Equal(t, want, stateBytes(t, c), "the state after the second restart")
			require.ErrorIs(t, c.Acknowledge("p", "t", "k"), engine.ErrNotFound, "given back before the restart")
			_, err = peerFetch(c, time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

// heldOver fetches every row of "p" for task "t", held, over conn.
func heldOver(t *testing.T, conn *wire.Conn) {
	t.Helper()
	var reply wirepb.MetaReply
	require.NoError(t, conn.Do(context.Background(), wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: []byte("k"), Hold: true}, nil, &reply, nil))
	require.Len(t, reply.GetMeta().GetIndexes(), 4)
}

// A client keeps what it holds while one of its connections is open, and
// when it closes its last one but connects again within the grace; its
// acknowledgment then keeps the rows. A client that named no id, or
// whose connections the controller closed, holds until the TTL.
func TestHeldClientThatComesBackKeepsItsRows(t *testing.T) {
	const grace = 200 * time.Millisecond
	c := newController(t, Config{HeldClientGrace: grace})
	doneWith(t, c, 4)
	s, addr := startServer(t, c, ServerConfig{}, "tcp")
	dial := func() *wire.Conn {
		conn, _, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Role: "client", ClientId: []byte("me")}, wire.ConnConfig{})
		require.NoError(t, err)
		return conn
	}
	first := dial()
	heldOver(t, first)
	second := dial()
	require.NoError(t, first.Close())
	_, err := peerFetch(c, 3*grace)
	require.ErrorIs(t, err, context.DeadlineExceeded, "one connection is still open")

	require.NoError(t, second.Close())
	time.Sleep(grace / 4)
	third := dial()
	defer third.Close()
	_, err = peerFetch(c, 3*grace)
	require.ErrorIs(t, err, context.DeadlineExceeded, "it came back within the grace")
	require.NoError(t, third.Do(context.Background(), wire.OpAcknowledge, &wirepb.AcknowledgeRequest{Partition: "p", Task: "t", Key: []byte("k")}, nil, &wirepb.Empty{}, nil))
	_, err = peerFetch(c, time.Second)
	require.ErrorIs(t, err, engine.ErrDone, "acknowledged")

	// Closed by the server (here, shutting down): not the client's doing.
	c2 := newController(t, Config{HeldClientGrace: grace})
	doneWith(t, c2, 4)
	s2, addr2 := startServer(t, c2, ServerConfig{}, "tcp")
	conn, _, err := wire.Dial(context.Background(), addr2, &wirepb.Hello{Role: "client", ClientId: []byte("me")}, wire.ConnConfig{})
	require.NoError(t, err)
	defer conn.Close()
	heldOver(t, conn)
	require.NoError(t, s2.Close())
	_, err = peerFetch(c2, 3*grace)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the controller closed the connection")
	_ = s
}

func TestClientTable(t *testing.T) {
	var tb clientTable
	t0 := time.Unix(1000, 0)
	gone := func(id string, at time.Duration) bool {
		g, _ := tb.gone(id, t0.Add(at), time.Second)
		return g
	}
	tb.connected("a")
	tb.connected("a")
	tb.connected("b")
	tb.disconnected("a", true, t0, time.Minute)
	assert.False(t, gone("a", time.Hour), "a connection left")
	tb.disconnected("a", true, t0, time.Minute)
	assert.False(t, gone("a", time.Second/2), "within the grace")
	assert.True(t, gone("a", time.Second), "past the grace")
	tb.connected("a")
	assert.False(t, gone("a", time.Hour), "came back")

	tb.disconnected("b", false, t0, time.Minute)
	assert.False(t, gone("b", time.Hour), "closed by the controller")
	assert.False(t, gone("c", time.Hour), "never seen")
	tb.disconnected("c", true, t0, time.Minute) // never counted in: ignored
	assert.False(t, gone("c", time.Hour))
	tb.connected("")
	assert.Empty(t, tb.m[""], "no id, not followed")

	// Forgotten once they left longer ago than keep, unless back.
	tb.disconnected("a", true, t0.Add(time.Second), time.Minute)
	tb.connected("d")
	tb.disconnected("d", true, t0.Add(2*time.Minute), time.Minute)
	assert.NotContains(t, tb.m, "a")
	assert.NotContains(t, tb.m, "b")
	assert.Contains(t, tb.m, "d")
	assert.Len(t, tb.left, 1)
}

// A hold group stands for one consumer fetching through several
// processes (a DataLoader's workers, whose main process acknowledges):
// a fetch in the group is told ErrDone though the group's own holds are
// unsettled, where it used to wait for them (and the main process that
// settles them waited on it); a fetch outside the group still waits. The
// group survives a restart (logged with the hold, saved in snapshots).
func TestHoldGroupDoesNotWaitForItsOwnHolds(t *testing.T) {
	ctx := context.Background()
	inGroup := func(c *Controller, key string, n int, d time.Duration) (*engine.BatchMeta, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: n, Wait: true,
			Key: key, Hold: true, HoldGroup: "loader-1"})
	}
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			doneWith(t, c, 6)
			m, err := inGroup(c, "k1", 4, time.Second)
			require.NoError(t, err)
			require.Equal(t, 4, m.Len())
			require.NoError(t, c.WaitDurable(ctx))
			way.stop(t, c)

			c = openDurable(t, dir, Config{})
			defer c.Close()
			m, err = inGroup(c, "k2", 4, time.Second)
			require.NoError(t, err)
			require.Equal(t, 2, m.Len(), "what the group's hold leaves")
			start := time.Now()
			_, err = inGroup(c, "k3", 4, 10*time.Second)
			require.ErrorIs(t, err, engine.ErrDone, "the group's own holds do not keep it from the end")
			require.Less(t, time.Since(start), 5*time.Second)
			_, err = peerFetch(c, 300*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "a fetch outside the group waits for them")
			other, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, err = c.Fetch(other, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true,
				Key: "k4", Hold: true, HoldGroup: "loader-2"})
			require.ErrorIs(t, err, context.DeadlineExceeded, "another group too")

			require.NoError(t, c.Acknowledge("p", "t", "k1"))
			require.NoError(t, c.Acknowledge("p", "t", "k2"))
			_, err = peerFetch(c, time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

func TestHoldGroupRefusals(t *testing.T) {
	c := newController(t, Config{})
	doneWith(t, c, 2)
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "k", HoldGroup: "g"})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "a hold group without a held fetch")
	_, err = c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "k", Hold: true,
		HoldGroup: strings.Repeat("g", 65)})
	require.ErrorIs(t, err, engine.ErrInvalid)
	require.ErrorContains(t, err, "hold group of 65 bytes, at most 64")
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	require.Zero(t, trues(st.Consumed), "refused before anything was consumed")
}

// A member of a hold group killed (a DataLoader's worker) never settles
// its holds: a fetch of the group at the end waits for them to come back
// and gets them, rather than ErrDone with them held until the TTL.
func TestHoldGroupTakesBackAnExitedMembersHolds(t *testing.T) {
	c := newController(t, Config{})
	doneWith(t, c, 6)
	member := exec.Command("sleep", "60")
	require.NoError(t, member.Start())
	defer member.Process.Kill()
	inGroup := func(key string, pid int32, d time.Duration) (*engine.BatchMeta, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true,
			Key: key, Hold: true, HoldGroup: "loader-1", HolderPID: pid})
	}
	m, err := inGroup("k1", int32(member.Process.Pid), time.Second)
	require.NoError(t, err)
	require.Equal(t, 4, m.Len())
	m2, err := inGroup("k2", int32(os.Getpid()), time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, m2.Len())
	_, err = inGroup("k3", int32(os.Getpid()), 10*time.Second)
	require.ErrorIs(t, err, engine.ErrDone, "the member lives: the group's own holds do not keep it from the end")

	require.NoError(t, member.Process.Kill())
	member.Wait() // reaped: a zombie reads as alive
	start := time.Now()
	got, err := inGroup("k4", int32(os.Getpid()), 10*time.Second)
	require.NoError(t, err, "the exited member's rows come back to its group")
	assert.Equal(t, m.Indexes, got.Indexes)
	assert.Less(t, time.Since(start), 5*time.Second, "at the next look, not after the TTL")
	require.ErrorIs(t, c.Acknowledge("p", "t", "k1"), engine.ErrNotFound, "the member's rows went to another")
	require.NoError(t, c.Acknowledge("p", "t", "k2"))
	require.NoError(t, c.Acknowledge("p", "t", "k4"))
	_, err = inGroup("k5", int32(os.Getpid()), 10*time.Second)
	require.ErrorIs(t, err, engine.ErrDone)
}

// fetchTableBytes encodes partition "p"'s fetch table, the entries'
// times included (stateBytes leaves them out).
func fetchTableBytes(t *testing.T, c *Controller) []byte {
	t.Helper()
	p, _ := c.lock("p")
	require.NotNil(t, p)
	fs, back := p.fetches.copyState(time.Now())
	p.mu.Unlock()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&wirepb.StatePartition{Fetches: fs, GivenBack: back})
	require.NoError(t, err)
	return b
}

// A held fetch whose rows are all cleared is no longer held, and can be
// asked again for fetchKeyTTL from the clear. The clear record had no
// time, so a replayed one restarted the entry's time at the replay: a
// clear long before the restart gave the fetch ten minutes more, and its
// entry differed from the live one.
func TestClearedHoldsTimeReplayed(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{HeldFetchTTL: -1}
	c := openDurable(t, dir, cfg)
	doneWith(t, c, 4)
	a := heldFetch(t, c, "a", 2)
	_, err := c.ClearRows("p", a.Indexes)
	require.NoError(t, err)
	require.NoError(t, c.WaitDurable(context.Background()))
	want := fetchTableBytes(t, c)
	crash(t, c)
	time.Sleep(10 * time.Millisecond) // the replay a few milliseconds after the clear
	c = openDurable(t, dir, cfg)
	defer c.Close()
	require.Equal(t, want, fetchTableBytes(t, c), "the fetch table replayed, times included")
}

// A hold's holder is not logged, so after a restart only the TTL gave it
// back. Its caller, redialing, asks the same keyed fetch again: that names
// the holder, and once the holder exited a fetch waiting at the end gets
// the rows within seconds.
func TestHeldFetchAskedAgainAfterARestartNamesItsHolder(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{})
			doneWith(t, c, 4)
			holder := exec.Command("sleep", "60")
			require.NoError(t, holder.Start())
			defer holder.Process.Kill()
			req := engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "k", Hold: true}
			m, err := c.Fetch(context.Background(), req)
			require.NoError(t, err)
			require.NoError(t, c.WaitDurable(context.Background()))
			way.stop(t, c)

			c = openDurable(t, dir, Config{})
			defer c.Close()
			req.HolderPID = int32(holder.Process.Pid)
			again, err := c.Fetch(context.Background(), req)
			require.NoError(t, err)
			require.Equal(t, m.Indexes, again.Indexes, "asked again: the same rows")
			_, err = peerFetch(c, 300*time.Millisecond)
			require.ErrorIs(t, err, context.DeadlineExceeded, "the holder lives")
			givenBackOnKill(t, c, holder, m.Indexes)
		})
	}
}

// A hold that expired while nobody fetched is given back by the next
// Stats too: its rows must not be counted consumed by the look that gave
// them back (they were counted before the look, and held no longer).
func TestStatsSeesExpiredHold(t *testing.T) {
	c := newController(t, Config{HeldFetchTTL: 20 * time.Millisecond})
	doneWith(t, c, 4)
	heldFetch(t, c, "a", 3)
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1, Key: "b"})
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	ps, err := c.Stats("p")
	require.NoError(t, err)
	assert.Equal(t, []engine.TaskStats{{Task: "t", Consumed: 1, Progress: 0.25}}, ps.Tasks, "the expired hold's rows are back")
}

// A held fetch asked again (its caller redialed) once its TTL ended but
// before anything looked is given back by that very look: the caller
// hears so, rather than getting the rows a second time as if still
// held while the next look hands them to another consumer.
func TestHeldFetchAskedAgainPastItsTTL(t *testing.T) {
	c := newController(t, Config{HeldFetchTTL: 20 * time.Millisecond})
	doneWith(t, c, 4)
	held := heldFetch(t, c, "a", 4)
	time.Sleep(50 * time.Millisecond)
	_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "a", Hold: true})
	require.ErrorIs(t, err, context.Canceled, "the hold outlived its TTL: given back")
	require.ErrorContains(t, err, "given back")
	m, err := peerFetch(c, time.Second)
	require.NoError(t, err)
	assert.Equal(t, held.Indexes, m.Indexes, "the rows went back to the task")
	require.ErrorIs(t, c.Acknowledge("p", "t", "a"), engine.ErrNotFound)
}

// A member of a hold group that closed its every connection (killed, on
// another host than the controller: known by its client id) may be gone:
// a fetch of its group at the end waits for the grace to tell, and gets
// its rows back once it ended, rather than ErrDone at once with the rows
// coming back later to no one of the group.
func TestHoldGroupWaitsForAMemberThatLeft(t *testing.T) {
	const grace = 300 * time.Millisecond
	c := newController(t, Config{HeldClientGrace: grace})
	doneWith(t, c, 6)
	_, addr := startServer(t, c, ServerConfig{}, "tcp")
	member, _, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Role: "client", ClientId: []byte("worker-1")}, wire.ConnConfig{})
	require.NoError(t, err)
	var reply wirepb.MetaReply
	require.NoError(t, member.Do(context.Background(), wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
		Key: []byte("k1"), Hold: true, HoldGroup: []byte("loader-1")}, nil, &reply, nil))
	require.Len(t, reply.GetMeta().GetIndexes(), 4)
	inGroup := func(key string, d time.Duration) (*engine.BatchMeta, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return c.Fetch(ctx, engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Wait: true,
			Key: key, Hold: true, HoldGroup: "loader-1", HolderClient: "main"})
	}
	m, err := inGroup("k2", time.Second)
	require.NoError(t, err)
	require.Equal(t, 2, m.Len())
	_, err = inGroup("k3", time.Second)
	require.ErrorIs(t, err, engine.ErrDone, "the member is connected: its holds are the group's own")

	require.NoError(t, member.Close())
	require.Eventually(t, func() bool { left, _ := c.clients.gone("worker-1", time.Now(), 0); return left },
		10*time.Second, time.Millisecond, "the controller sees the member's connection end")
	got, err := inGroup("k4", 10*time.Second)
	require.NoError(t, err, "the member left: its rows may come back")
	assert.Equal(t, reply.GetMeta().GetIndexes(), got.Indexes)
	require.ErrorIs(t, c.Acknowledge("p", "t", "k1"), engine.ErrNotFound)
}

// A held fetch whose rows were all cleared holds nothing: it is no
// longer held, so that it leaves the partition's holds and is bounded
// with the fetch table's other entries (a client that cleared what it
// held and never acknowledged used to grow both, for the held-fetch TTL,
// forever with a negative one). Its acknowledgment still succeeds, its
// giving back gives back nothing, and a fetch asked again with its key
// answers as before; after a restart the same. A fetch that still holds
// some of its rows stays held.
func TestHeldFetchOfClearedRowsIsNoLongerHeld(t *testing.T) {
	heldKeys := func(c *Controller) []string {
		p, _ := c.lock("p")
		require.NotNil(t, p)
		defer p.mu.Unlock()
		var keys []string
		for _, e := range p.held {
			keys = append(keys, e.key)
		}
		for _, e := range p.fetches.m {
			if e.held && !slices.Contains(keys, e.key) {
				keys = append(keys, e.key+" (in the table only)")
			}
		}
		slices.Sort(keys)
		return keys
	}
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.HeldFetchTTL = -1 // holds never expire
			dir := t.TempDir()
			c := openDurable(t, dir, cfg)
			doneWith(t, c, 8)
			a := heldFetch(t, c, "a", 3)
			b := heldFetch(t, c, "b", 3)
			_, err := c.ClearRows("p", a.Indexes)
			require.NoError(t, err)
			_, err = c.ClearRows("p", b.Indexes[:1])
			require.NoError(t, err)
			if restart {
				crash(t, c)
				c = openDurable(t, dir, cfg)
			}
			t.Cleanup(func() { c.Close() })
			assert.Equal(t, []string{"b"}, heldKeys(c), "a holds nothing")
			st, err := c.ConsumptionStatus("p", "t")
			require.NoError(t, err)
			assert.Equal(t, b.Indexes[1:], st.Held)

			again, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 3, Key: "a", Hold: true})
			require.NoError(t, err)
			assert.True(t, again.Empty(), "asked again: the rows it took, none left")
			assert.Equal(t, []string{"b"}, heldKeys(c), "asked again, still not held")
			require.NoError(t, c.Acknowledge("p", "t", "a"))
			require.NoError(t, c.Unconsume("p", "t", "a"), "nothing to give back")
			require.NoError(t, c.Acknowledge("p", "t", "b"))
			assert.Empty(t, heldKeys(c))

			rest, err := peerFetch(c, time.Second)
			require.NoError(t, err)
			assert.Equal(t, 2, rest.Len(), "what nobody took, and nothing given back twice")
			_, err = peerFetch(c, time.Second)
			require.ErrorIs(t, err, engine.ErrDone)
		})
	}
}

// A held fetch given back is refused its acknowledgment however late it
// comes: its key outlives its entry in the fetch table (10 minutes, or
// 65,536 keyed fetches), a restart included. Forgotten, the key read as
// one never held, and the acknowledgment succeeded: the caller kept rows
// another consumer had been given. A key never fetched still succeeds.
func TestHeldFetchGivenBackLongAgo(t *testing.T) {
	// age makes the fetch table's entry for key older than its TTL: as
	// if 10 minutes had passed.
	age := func(c *Controller, key string) {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		e := p.fetches.m[key]
		require.NotNil(t, e, "fetch %q", key)
		e.at = e.at.Add(-2 * fetchKeyTTL)
	}
	// outlive makes key's hold older than its TTL. The TTL is long in
	// real time: "kept" must be acknowledged within it, and a loaded
	// machine took more than a short one between its fetch and its ack.
	const ttl = time.Minute
	outlive := func(c *Controller, key string) {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		e := p.fetches.m[key]
		require.NotNil(t, e, "fetch %q", key)
		e.heldFrom = e.heldFrom.Add(-2 * ttl)
		p.heldCheck = time.Time{}
	}
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{HeldFetchTTL: ttl}
			c := openDurable(t, dir, cfg)
			doneWith(t, c, 6)
			heldFetch(t, c, "kept", 2)
			require.NoError(t, c.Acknowledge("p", "t", "kept"))
			held := heldFetch(t, c, "a", 4)
			outlive(c, "a")
			got, err := peerFetch(c, 10*time.Second)
			require.NoError(t, err, "given back by the TTL")
			require.Equal(t, held.Indexes, got.Indexes)
			age(c, "a")
			age(c, "kept")
			err = c.Acknowledge("p", "t", "a")
			require.ErrorIs(t, err, engine.ErrNotFound, "the rows went to another consumer")
			require.ErrorContains(t, err, "given back")
			require.ErrorIs(t, c.Acknowledge("p", "other", "a"), engine.ErrInvalid, "another task's key")
			require.NoError(t, c.Acknowledge("p", "t", "kept"), "acknowledged long ago: the retry succeeds")
			require.NoError(t, c.Acknowledge("p", "t", "never fetched"))

			require.NoError(t, c.WaitDurable(context.Background()))
			want := stateBytes(t, c)
			way.stop(t, c)
			c = openDurable(t, dir, cfg)
			defer c.Close()
			for _, key := range []string{"a", "kept"} {
				if e := c.parts["p"].fetches.m[key]; e != nil && !e.at.Before(time.Now().Add(-fetchKeyTTL)) {
					age(c, key) // replayed from the log: the entry is new again
				}
			}
			require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			require.ErrorIs(t, c.Acknowledge("p", "t", "a"), engine.ErrNotFound, "given back before the restart")
		})
	}
}

// The held fetches given back a partition remembers are bounded: the
// oldest go first.
func TestGivenBackBound(t *testing.T) {
	var b givenBack
	now := time.Now()
	for i := range maxGivenBack + 1 {
		b.add(fmt.Sprintf("k%d", i), "t", now)
	}
	require.Len(t, b.m, maxGivenBack)
	require.Len(t, b.order, maxGivenBack)
	assert.NotContains(t, b.m, "k0")
	assert.Contains(t, b.m, fmt.Sprintf("k%d", maxGivenBack))
}

// A held fetch given back, asked again once its entry in the fetch table
// is gone (10 minutes, or 65,536 keyed fetches), answers that it was
// given back, as it does while the entry lives: before, it took new rows,
// which its caller, retrying the old fetch, would have used as the old
// ones.
func TestHeldFetchGivenBackLongAgoAskedAgain(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 6)
	heldFetch(t, c, "a", 4)
	require.NoError(t, c.Unconsume("p", "t", "a"))
	again := func() error {
		_, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "a", Hold: true})
		return err
	}
	require.ErrorIs(t, again(), context.Canceled, "while the entry lives")
	func() {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		p.fetches.m["a"].at = p.fetches.m["a"].at.Add(-2 * fetchKeyTTL) // as if 10 minutes had passed
	}()
	err := again()
	require.ErrorIs(t, err, context.Canceled, "once the entry is gone")
	require.ErrorContains(t, err, "given back")
	_, err = c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "other", Fields: []string{"x"}, BatchSize: 4, Key: "a"})
	require.ErrorIs(t, err, engine.ErrInvalid, "another task's key")
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	assert.Zero(t, trues(st.Consumed), "the repeat took no row")
}

// A held fetch that a reset of its task's consumption un-holds can still
// be asked again for fetchKeyTTL from the reset, as one acknowledged can
// from its acknowledgment: it answers with the rows it took. Before, the
// entry kept the time of the fetch, so a hold older than fetchKeyTTL (a
// long or negative HeldFetchTTL) lost its entry at the reset, and the
// fetch asked again took the new round's rows as if it were a new one.
// The same after a restart, from the log or a snapshot.
func TestResetKeepsAnOldHoldsAnswer(t *testing.T) {
	for _, way := range restartWays {
		t.Run(way.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{HeldFetchTTL: -1}
			c := openDurable(t, dir, cfg)
			doneWith(t, c, 4)
			a := heldFetch(t, c, "a", 2)
			func() {
				p, _ := c.lock("p")
				defer p.mu.Unlock()
				e := p.fetches.m["a"]
				e.at = e.at.Add(-2 * fetchKeyTTL) // held for 20 minutes
			}()
			require.NoError(t, c.ResetConsumption("p", "t"))
			again := func(c *Controller) {
				t.Helper()
				m, err := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 2, Key: "a", Hold: true})
				require.NoError(t, err)
				assert.Equal(t, a.Indexes, m.Indexes, "asked again: the rows it took")
				st, err := c.ConsumptionStatus("p", "t")
				require.NoError(t, err)
				assert.Zero(t, trues(st.Consumed), "the repeat took no row of the new round")
				assert.Empty(t, st.Held)
			}
			again(c)
			require.NoError(t, c.WaitDurable(context.Background()))
			want := stateBytes(t, c)
			way.stop(t, c)
			c = openDurable(t, dir, cfg)
			defer c.Close()
			require.Equal(t, want, stateBytes(t, c), "the state after the restart")
			again(c)
		})
	}
}

// A snapshot (here a checkpoint) keeps the held fetches given back in a
// field of their own, and loading it refuses their late acknowledgment
// and their fetch asked again as before, with the same errors. A
// snapshot of the old encoding, which wrote each as a fetch both spent
// and held, loads with the same meaning.
func TestGivenBackKeysInTheirOwnSnapshotField(t *testing.T) {
	c := newController(t, DefaultConfig())
	doneWith(t, c, 6)
	heldFetch(t, c, "a", 4)
	require.NoError(t, c.Unconsume("p", "t", "a"))
	func() {
		p, _ := c.lock("p")
		defer p.mu.Unlock()
		p.fetches.m["a"].at = p.fetches.m["a"].at.Add(-2 * fetchKeyTTL) // its entry gone: refused as given back alone
	}()
	refusals := func(c *Controller) []string {
		t.Helper()
		ack := c.Acknowledge("p", "t", "a")
		require.ErrorIs(t, ack, engine.ErrNotFound)
		require.ErrorContains(t, ack, "given back at")
		_, again := c.Fetch(context.Background(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4, Key: "a", Hold: true})
		require.ErrorIs(t, again, context.Canceled)
		return []string{ack.Error(), again.Error()}
	}
	want := refusals(c)
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))
	var saved *wirepb.StatePartition
	rewriteState(t, filepath.Join(dir, stateFile), func(sp *wirepb.StatePartition) { saved = proto.Clone(sp).(*wirepb.StatePartition) })
	for _, f := range saved.Fetches {
		assert.False(t, f.Spent && f.Held, "fetch %q saved spent and held", f.Key)
	}
	assertGivenBackSaved(t, saved)

	var loaded []*wirepb.StatePartition // the fetch tables loaded
	load := func(t *testing.T) {
		d := newController(t, DefaultConfig())
		_, err := d.Load(dir)
		require.NoError(t, err)
		p, _ := d.lock("p")
		require.NotNil(t, p)
		fs, back := p.fetches.copyState(time.Now())
		p.mu.Unlock()
		loaded = append(loaded, &wirepb.StatePartition{Fetches: fs, GivenBack: back})
		assert.Equal(t, want, refusals(d))
		st, err := d.ConsumptionStatus("p", "t")
		require.NoError(t, err)
		assert.Zero(t, trues(st.Consumed), "the repeat took no row")
	}
	t.Run("new", load)
	t.Run("old", func(t *testing.T) {
		rewriteState(t, filepath.Join(dir, stateFile), oldGivenBack)
		load(t)
		require.Len(t, loaded, 2)
		assert.True(t, proto.Equal(loaded[0], loaded[1]), "the old encoding loads as the new: %v, then %v", loaded[0], loaded[1])
	})
}

// assertGivenBackSaved checks that sp saved the held fetch "a" of task
// "t" as given back.
func assertGivenBackSaved(t *testing.T, sp *wirepb.StatePartition) {
	t.Helper()
	require.Len(t, sp.GivenBack, 1)
	assert.Equal(t, "a", string(sp.GivenBack[0].Key))
	assert.Equal(t, "t", sp.GivenBack[0].Task)
	assert.NotZero(t, sp.GivenBack[0].AtUnixMs)
}

// oldGivenBack rewrites sp's held fetches given back as the state
// encoding before StatePartition.given_back wrote them: fetches both
// spent and held, after the table's entries.
func oldGivenBack(sp *wirepb.StatePartition) {
	for _, b := range sp.GivenBack {
		sp.Fetches = append(sp.Fetches, &wirepb.StateFetch{Key: b.Key, Task: b.Task, Spent: true, Held: true, AtUnixMs: b.AtUnixMs})
	}
	sp.GivenBack = nil
}
