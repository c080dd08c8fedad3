package controller

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// README's batch API section: a fetch marks rows consumed only for a
// caller that receives them; one whose connection breaks while it waits
// takes nothing. A client process waits in a fetch of an empty partition
// and is killed (SIGKILL); rows put afterwards go to the next fetch, and
// the killed client's task has consumed none of them.
func TestWaitingFetchOfAKilledClientTakesNothing(t *testing.T) {
	if addr := os.Getenv("TQ_WAITING_CLIENT_ADDR"); addr != "" {
		waitingClientProcess(addr) // the child: never returns
	}
	c := newController(t, DefaultConfig())
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	child := exec.Command(os.Args[0], "-test.run=^TestWaitingFetchOfAKilledClientTakesNothing$", "-test.count=1")
	child.Env = append(os.Environ(), "TQ_WAITING_CLIENT_ADDR="+addr)
	child.Stderr = os.Stderr
	require.NoError(t, child.Start())
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			require.True(t, time.Now().Before(deadline), what)
		}
	}
	waitFor("the child's fetch waiting", func() bool { return c.BlockedFetches() == 1 })
	require.NoError(t, child.Process.Kill())
	child.Wait()
	waitFor("the killed child's fetch ended", func() bool { return c.BlockedFetches() == 0 })

	m := insert(t, c, "p", 4, "x")
	commitDense(t, c, "p", m.Indexes, "x")
	st, err := c.ConsumptionStatus("p", "t")
	require.NoError(t, err)
	require.Equal(t, []bool{false, false, false, false}, st.Consumed, "the killed client's fetch took rows")
	require.Equal(t, m.Indexes, fetch(t, c, "p", "t", 4, "x").Indexes, "the next fetch gets the rows")
}

// waitingClientProcess waits in a fetch of 4 rows of "p" for task "t"
// at addr, keyed as a remote client's is.
func waitingClientProcess(addr string) {
	ctx := context.Background()
	conn, _, err := wire.Dial(ctx, addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	var reply wirepb.MetaReply
	err = conn.Do(ctx, wire.OpFetch, &wirepb.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 4,
		Wait: true, Key: []byte("waiting-client-1")}, nil, &reply, nil)
	fmt.Fprintln(os.Stderr, "fetch returned:", err, reply.GetMeta().GetIndexes())
	os.Exit(3)
}
