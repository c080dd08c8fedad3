package main

// The streaming loader across processes: a producer process writes a
// partition through `tq serve`, and trainer ranks — each its own process
// — consume it with stream.Loader.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/stream"
	"github.com/tqgo/tq/wire"
)

// streamHelper is the body of the stream-producer and stream-consumer
// helper processes, configured through the environment:
//
//	producer: TQ_PART, TQ_ROWS, TQ_CHUNK, TQ_PAUSE (between chunks),
//	          TQ_DONE (mark the partition done at the end), TQ_WAIT_READY
//	          (write nothing until that many consumers said READY)
//	consumer: TQ_PART (a comma-separated list: one partition a step),
//	          TQ_DP_RANK, TQ_DP_SIZE, TQ_BREAK_AFTER (stop after
//	          that many micro-batches and print NEXT step:index, and
//	          POSITION with the whole position in JSON),
//	          TQ_START (step:index, or a POSITION's JSON), TQ_CONTINUOUS with TQ_WANT (stop
//	          after that many rows), TQ_READY (a key it puts in partition
//	          readyPart once its loader is made), TQ_SAMPLER (its name;
//	          default rank_aware), TQ_HANG_AFTER (after that many
//	          micro-batches print HANGING and wait, in the loop's body,
//	          to be killed)
//
// A consumer prints each micro-batch as "BATCH step index x,x,...".
func streamHelper(ctx context.Context, t *testing.T, c *client.Client, role string) {
	env := func(name string) int {
		v, _ := strconv.Atoi(os.Getenv(name))
		return v
	}
	part := os.Getenv("TQ_PART")
	switch role {
	case "stream-producer":
		if n := env("TQ_WAIT_READY"); n > 0 {
			// Rows written before every consumer fetches would go to
			// the DP group whose processes started first.
			kv := kvapi.New(c)
			require.Eventually(t, func() bool {
				keys, err := kv.List(ctx, readyPart)
				require.NoError(t, err)
				return len(keys[readyPart]) >= n
			}, 60*time.Second, 5*time.Millisecond, "%d consumers READY", n)
		}
		rows, chunk := env("TQ_ROWS"), env("TQ_CHUNK")
		for lo := 0; lo < rows; lo += chunk {
			n := min(chunk, rows-lo)
			xs := make([]int64, n)
			for i := range xs {
				xs[i] = int64(lo + i)
			}
			col, err := engine.DenseOf(xs, 1)
			require.NoError(t, err)
			_, err = c.PutNew(ctx, part, engine.MustBatch(engine.Field{Name: "x", Col: col}))
			require.NoError(t, err)
			time.Sleep(time.Duration(env("TQ_PAUSE")) * time.Millisecond)
		}
		if os.Getenv("TQ_DONE") != "" {
			require.NoError(t, c.MarkDone(ctx, part))
		}
	case "stream-consumer":
		cfg := stream.DefaultConfig()
		cfg.Partitions, cfg.Task, cfg.Fields, cfg.MicroBatchSize = strings.Split(part, ","), "train", []string{"x"}, 4
		cfg.DPRank, cfg.DPSize, cfg.Prefetch = env("TQ_DP_RANK"), max(env("TQ_DP_SIZE"), 1), 3
		cfg.Continuous = os.Getenv("TQ_CONTINUOUS") != ""
		cfg.Sampler.Name = os.Getenv("TQ_SAMPLER")
		if s := os.Getenv("TQ_START"); strings.HasPrefix(s, "{") {
			require.NoError(t, json.Unmarshal([]byte(s), &cfg.Start))
		} else if s != "" {
			_, err := fmt.Sscanf(s, "%d:%d", &cfg.Start.Step, &cfg.Start.Index)
			require.NoError(t, err)
		}
		l, err := stream.New(c, cfg)
		require.NoError(t, err)
		if k := os.Getenv("TQ_READY"); k != "" {
			_, err := kvapi.New(c).Put(ctx, readyPart, k, nil, engine.Tags{"ready": "1"})
			require.NoError(t, err)
		}
		stop, want, hang, rows, n := env("TQ_BREAK_AFTER"), env("TQ_WANT"), env("TQ_HANG_AFTER"), 0, 0
		for b, err := range l.All(ctx) {
			require.NoError(t, err)
			xs, err := engine.Values[int64](b.Data.Col("x"))
			require.NoError(t, err)
			strs := make([]string, len(xs))
			for i, x := range xs {
				strs[i] = strconv.FormatInt(x, 10)
			}
			fmt.Printf("BATCH %d %d %s\n", b.Step, b.Index, strings.Join(strs, ","))
			n++
			rows += len(xs)
			if n == hang {
				fmt.Println("HANGING")
				select {}
			}
			if n == stop || (want > 0 && rows >= want) {
				// Let the prefetcher fetch ahead before the break.
				time.Sleep(100 * time.Millisecond)
				break
			}
		}
		next := l.Next()
		fmt.Printf("NEXT %d:%d\n", next.Step, next.Index)
		js, err := json.Marshal(next)
		require.NoError(t, err)
		fmt.Printf("POSITION %s\n", js)
	}
}

// readyPart is the partition stream consumers put their TQ_READY key in.
const readyPart = "stream-helpers-ready"

// streamRun runs helper processes and returns each one's BATCH lines and
// NEXT position.
type streamOut struct {
	batches  []string // "step index xs"
	next     string
	position string // JSON
}

func runStreamHelpers(t *testing.T, cmds ...*exec.Cmd) []streamOut {
	t.Helper()
	type result struct {
		i   int
		out []byte
		err error
	}
	res := make(chan result, len(cmds))
	for i, c := range cmds {
		go func() {
			out, err := c.CombinedOutput()
			res <- result{i, out, err}
		}()
	}
	outs := make([]streamOut, len(cmds))
	for range cmds {
		select {
		case r := <-res:
			if r.err != nil || !strings.Contains(string(r.out), "HELPER OK") {
				t.Fatalf("helper %d failed: %v\n%s", r.i, r.err, r.out)
			}
			for _, l := range strings.Split(string(r.out), "\n") {
				if rest, ok := strings.CutPrefix(l, "BATCH "); ok {
					outs[r.i].batches = append(outs[r.i].batches, rest)
				}
				if rest, ok := strings.CutPrefix(l, "NEXT "); ok {
					outs[r.i].next = rest
				}
				if rest, ok := strings.CutPrefix(l, "POSITION "); ok {
					outs[r.i].position = rest
				}
			}
		case <-time.After(90 * time.Second):
			t.Fatal("a helper process is still running after 90 s")
		}
	}
	return outs
}

// rowsOf returns the rows of BATCH lines, each once, failing on a repeat.
func rowsOf(t *testing.T, batches []string) []int {
	t.Helper()
	var out []int
	for _, b := range batches {
		f := strings.Fields(b)
		require.Len(t, f, 3, "batch line %q", b)
		for _, s := range strings.Split(f[2], ",") {
			x, err := strconv.Atoi(s)
			require.NoError(t, err)
			out = append(out, x)
		}
	}
	return out
}

func TestStreamProcesses(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "64MiB")
	env := append(p.env(), "TQ_ADDR="+p.addr("unix"))

	// One producer and a trainer of 2 DP groups × 2 ranks, four
	// processes. Rank 1 (group 0) breaks out after 3 micro-batches and
	// restarts as a new process at its Next.
	t.Run("groups", func(t *testing.T) {
		const rows = 96
		part := []string{"TQ_PART=groups"}
		consumer := func(rank int, extra ...string) *exec.Cmd {
			e := append(append(slices.Clone(env), part...), fmt.Sprintf("TQ_DP_RANK=%d", rank/2), "TQ_DP_SIZE=2")
			return helper(t, nil, "stream-consumer", append(e, extra...)...)
		}
		// The producer waits for the four consumers: a group whose
		// processes started late found the other group had taken every
		// row but 8 (CI, 2026-12-07), and rank 1 never got to its third
		// micro-batch.
		cmds := []*exec.Cmd{
			helper(t, nil, "stream-producer", append(append(slices.Clone(env), part...),
				fmt.Sprintf("TQ_ROWS=%d", rows), "TQ_CHUNK=16", "TQ_PAUSE=20", "TQ_DONE=1", "TQ_WAIT_READY=4")...),
			consumer(0, "TQ_READY=c0"), consumer(1, "TQ_BREAK_AFTER=3", "TQ_READY=c1"), consumer(2, "TQ_READY=c2"), consumer(3, "TQ_READY=c3"),
		}
		outs := runStreamHelpers(t, cmds...)
		require.Len(t, outs[2].batches, 3)
		require.Equal(t, "0:3", outs[2].next)
		again := runStreamHelpers(t, consumer(1, "TQ_START="+outs[2].next))
		rank := [][]string{outs[1].batches, append(outs[2].batches, again[0].batches...), outs[3].batches, outs[4].batches}

		require.Equal(t, rank[0], rank[1], "the ranks of group 0 see identical micro-batches, the restarted one too")
		require.Equal(t, rank[2], rank[3], "the ranks of group 1 see identical micro-batches")
		require.Equal(t, "1:0", outs[1].next, "finite mode ended past the partition")
		all := append(rowsOf(t, rank[0]), rowsOf(t, rank[2])...)
		slices.Sort(all)
		want := make([]int, rows)
		for i := range want {
			want[i] = i
		}
		require.Equal(t, want, all, "every row reaches exactly one group, once")
		require.NotEmpty(t, rank[0])
		require.NotEmpty(t, rank[2])
	})

	// Continuous mode follows a producer that keeps writing (and never
	// says done).
	t.Run("continuous", func(t *testing.T) {
		part := []string{"TQ_PART=cont"}
		outs := runStreamHelpers(t,
			helper(t, nil, "stream-consumer", append(append(slices.Clone(env), part...), "TQ_CONTINUOUS=1", "TQ_WANT=64")...),
			helper(t, nil, "stream-producer", append(append(slices.Clone(env), part...), "TQ_ROWS=64", "TQ_CHUNK=8", "TQ_PAUSE=50")...),
		)
		got := rowsOf(t, outs[0].batches)
		want := make([]int, 64)
		for i := range want {
			want[i] = i
		}
		require.Equal(t, want, got, "every row, in order, as it was written")
	})
}

// The durations the README's streaming loader section gives (how long a
// dead loader's held fetch, a client gone quiet, a host dropped off, and a
// batch a group left behind are waited for) are the ones tq serve uses:
// each phrase, made from the constant, is in the section (white space
// folded).
func TestReadmeStreamStatesTheDefaults(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, sec, ok := strings.Cut(string(b), "\n## The streaming loader\n")
	require.True(t, ok, "README.md has no streaming loader section")
	sec, _, _ = strings.Cut(sec, "\n## ")
	sec = strings.Join(strings.Fields(sec), " ")
	for _, phrase := range []string{
		fmt.Sprintf("`tq serve --held-fetch-ttl` (%d min; `controller.Config.HeldFetchTTL`)", int(controller.DefaultHeldFetchTTL/time.Minute)),
		fmt.Sprintf("`tq serve --held-client-grace` (%d s;", int(controller.DefaultHeldClientGrace/time.Second)),
		fmt.Sprintf("`tq serve --peer-timeout`, %d s,", int(wire.DefaultPeerTimeout/time.Second)),
		fmt.Sprintf("`tq serve --kept-batch-ttl` (%d min; `controller.Config.KeptBatchTTL`; negative: never)", int(controller.DefaultKeptBatchTTL/time.Minute)),
	} {
		assert.Contains(t, sec, phrase)
	}
}

// The README: a loader that dies holding prefetched rows (a private
// sampler's held fetches) does not hold them until the held-fetch TTL
// when another consumer waits at the end for them: over tq serve's unix
// socket the controller sees its process gone, over TCP its client
// closed every connection and did not come back within
// --held-client-grace (a client on another host). A sequential loader process takes 2 micro-batches
// of a done partition of 32 rows, with 3 more prefetched and held, and is
// killed (SIGKILL) in the loop's body; a second one then reads the rest,
// the killed one's prefetched rows included: each row reaches one of the
// two, once, long before the 10 min TTL.
func TestStreamKilledLoaderGivesBackItsPrefetched(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1",
		"--capacity", "64MiB", "--held-client-grace", "200ms")
	for _, scheme := range []string{"unix", "tcp"} {
		t.Run(scheme, func(t *testing.T) {
			env := append(p.env(), "TQ_ADDR="+p.addr(scheme), "TQ_PART=killed-"+scheme, "TQ_SAMPLER=sequential")
			if scheme == "tcp" {
				// As from another host: the controller knows no pid.
				env = append(env, "TQ_HOST=another-host")
			}
			runStreamHelpers(t, helper(t, nil, "stream-producer", append(slices.Clone(env), "TQ_ROWS=32", "TQ_CHUNK=32", "TQ_DONE=1")...))

			killed := helper(t, nil, "stream-consumer", append(slices.Clone(env), "TQ_HANG_AFTER=2")...)
			out, err := killed.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, killed.Start())
			exited := make(chan struct{})
			t.Cleanup(func() { killed.Process.Kill(); <-exited })
			var first []string
			hanging := make(chan struct{})
			go func() {
				defer close(exited)
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if rest, ok := strings.CutPrefix(sc.Text(), "BATCH "); ok {
						first = append(first, rest)
					}
					if sc.Text() == "HANGING" {
						close(hanging)
					}
				}
				killed.Wait()
			}()
			select {
			case <-hanging:
			case <-time.After(60 * time.Second):
				t.Fatal("the first loader did not take 2 micro-batches in 60 s")
			}
			// Its prefetcher fills its 3 slots, held, while the body waits.
			c, err := client.Connect(t.Context(), p.addr("unix"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true})
			require.NoError(t, err)
			defer c.Close()
			require.Eventually(t, func() bool {
				st, err := c.ConsumptionStatus(t.Context(), "killed-"+scheme, "train")
				require.NoError(t, err)
				return len(st.Held) == 12
			}, 30*time.Second, 5*time.Millisecond, "the killed loader's prefetched rows held")
			require.NoError(t, killed.Process.Signal(syscall.SIGKILL))
			<-exited
			require.Len(t, first, 2)

			rest := runStreamHelpers(t, helper(t, nil, "stream-consumer", env...))[0]
			all := append(rowsOf(t, first), rowsOf(t, rest.batches)...)
			slices.Sort(all)
			want := make([]int, 32)
			for i := range want {
				want[i] = i
			}
			require.Equal(t, want, all, "every row reaches one of the two loaders, once")
		})
	}
}

// The README: a rank that restarts in a new process with Config.Start =
// l.Next() (the whole position, kept with its checkpoint) after a DP peer
// cleared the partition moves on to the next one rather than wait for
// good. Rank 1 of 2 DP groups, a process, takes one micro-batch of "gp"
// and stops; rank 0, another, reads all it has of "gp"; "gp" is cleared;
// rank 1 starts again as a new process at the position it printed, and
// reads "gq" alone.
func TestStreamRestartedProcessMovesPastAClearedPartition(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "64MiB")
	env := append(p.env(), "TQ_ADDR="+p.addr("unix"))
	with := func(extra ...string) []string { return append(slices.Clone(env), extra...) }
	runStreamHelpers(t,
		helper(t, nil, "stream-producer", with("TQ_PART=gp", "TQ_ROWS=32", "TQ_CHUNK=32", "TQ_DONE=1")...),
		helper(t, nil, "stream-producer", with("TQ_PART=gq", "TQ_ROWS=8", "TQ_CHUNK=8", "TQ_DONE=1")...))
	rank := func(r int, parts string, extra ...string) *exec.Cmd {
		return helper(t, nil, "stream-consumer", with(append([]string{"TQ_PART=" + parts, fmt.Sprintf("TQ_DP_RANK=%d", r), "TQ_DP_SIZE=2"}, extra...)...)...)
	}
	first := runStreamHelpers(t, rank(1, "gp,gq", "TQ_BREAK_AFTER=1"))[0]
	require.Len(t, first.batches, 1)
	require.Equal(t, "0:1", first.next)
	var pos stream.Position
	require.NoError(t, json.Unmarshal([]byte(first.position), &pos))
	require.NotZero(t, pos.Gen, "the position names the generation of \"gp\": %s", first.position)

	peer := runStreamHelpers(t, rank(0, "gp"))[0]
	require.NotEmpty(t, peer.batches)
	c, err := client.Connect(t.Context(), p.addr("unix"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.ClearPartition(t.Context(), "gp"))

	again := runStreamHelpers(t, rank(1, "gp,gq", "TQ_START="+first.position))[0]
	require.NotEmpty(t, again.batches, "the restarted rank read nothing of \"gq\"")
	for _, b := range again.batches {
		require.True(t, strings.HasPrefix(b, "1 "), "a micro-batch of the cleared \"gp\": %q", b)
	}
	for _, x := range rowsOf(t, again.batches) {
		require.GreaterOrEqual(t, x, 0)
		require.Less(t, x, 8)
	}
	require.Equal(t, "2:0", again.next, "finite mode ended past the last partition")
}

// The README: a fetch names its sampler, so clients of one tq serve use
// different samplers side by side; tq serve --sampler only sets the
// default. Served with --sampler rank_aware, two fetches naming none for
// the same DP group and batch index get the same rows (a batch kept for
// the group), while two naming sequential get disjoint ones.
func TestServeSamplerIsOnlyTheDefault(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1",
		"--capacity", "64MiB", "--sampler", "rank_aware")
	ctx := t.Context()
	c, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	xs := make([]int64, 16)
	col, err := engine.DenseOf(xs, 1)
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "p", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)

	fetch := func(task, sampler string) []uint64 {
		m, err := c.GetMeta(ctx, client.MetaRequest{Mode: client.Fetch, Partition: "p", Task: task, Fields: []string{"x"}, BatchSize: 4,
			Sampler: engine.SamplerSpec{Name: sampler}, Options: engine.SamplingOptions{HasRank: true, DPRank: 0, BatchIndex: 0}})
		require.NoError(t, err)
		require.Equal(t, 4, m.Len())
		return m.Indexes
	}
	first := fetch("default", "")
	assert.Equal(t, first, fetch("default", ""), "the default, rank_aware, keeps the group's batch")
	seq := fetch("sequential", engine.SamplerSequential)
	assert.NotEqual(t, seq, fetch("sequential", engine.SamplerSequential), "a fetch naming sequential gets it")
}
