package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/storage/storagetest"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
	"google.golang.org/protobuf/proto"
)

// tq stat --json says what a workload did; --watch --json prints one
// object per refresh with rates from the second on; --watch draws
// progress bars.
func TestStatJSONAndWatch(t *testing.T) {
	bin := tqBinary(t)
	p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB")
	ctx := t.Context()
	c, err := client.Connect(ctx, p.addr("unix"), client.ConnectConfig{Token: p.token(t), WaitForUnits: true})
	require.NoError(t, err)
	defer c.Close()
	col, err := engine.DenseOf(make([]int64, 30))
	require.NoError(t, err)
	_, err = c.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "x", Col: col}))
	require.NoError(t, err)
	_, err = c.GetMeta(ctx, client.MetaRequest{Partition: "train", Fields: []string{"x"}, BatchSize: 10, Task: "actor", Mode: client.Fetch})
	require.NoError(t, err)
	addr := p.addr("unix")

	out, err := p.tqStat(bin, "--json", addr)
	require.NoError(t, err, "%s", out)
	var s statJSON
	require.NoError(t, json.Unmarshal(out, &s), "%s", out)
	require.Len(t, s.Partitions, 1)
	got := s.Partitions[0]
	require.Equal(t, "train", got.Partition)
	require.Equal(t, 30, got.Rows)
	require.Equal(t, 30, got.Produced)
	require.Equal(t, []taskJSON{{Task: "actor", Consumed: 10}}, got.Tasks)
	require.Nil(t, got.ProducedPerSecond, "no rate without a previous refresh")
	require.Len(t, s.Units, 1)
	require.True(t, s.Units[0].Alive)

	watch := func(args ...string) []byte {
		cmd := exec.Command(bin, append([]string{"stat", "--watch", "--interval", "200ms"}, args...)...)
		cmd.Env = append(cmd.Environ(), p.env()...)
		out, _ := runFor(cmd, 1500*time.Millisecond)
		return out
	}
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(watch("--json", addr)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var s statJSON
		require.NoError(t, json.Unmarshal(sc.Bytes(), &s), "%s", sc.Bytes())
		lines++
		if lines > 1 {
			require.NotNil(t, s.Partitions[0].ProducedPerSecond, "refresh %d has a rate", lines)
			require.Equal(t, 0.0, *s.Partitions[0].ProducedPerSecond)
		}
	}
	require.GreaterOrEqual(t, lines, 2, "--watch --json refreshes")

	// Into a pipe, as into a file: no escape codes, a line with the time
	// before each refresh.
	text := string(watch(addr))
	require.NotContains(t, text, "\x1b", "escape codes into a pipe")
	frames := regexp.MustCompile(`(?m)^--- \d\d:\d\d:\d\d ---\n`).Split(text, -1)
	require.GreaterOrEqual(t, len(frames), 3, "a separator line before each refresh:\n%s", text)
	last := frames[len(frames)-1]
	t.Logf("tq stat --watch:\n%s", last)
	require.Contains(t, last, "produced  ["+strings.Repeat("#", 24)+"]  30/30 100%")
	require.Contains(t, last, "actor     ["+strings.Repeat("#", 8)+strings.Repeat(".", 16)+"]  10/30 33%")
	require.Contains(t, last, "0.0 rows/s")
}

// Names a token holder chose (partitions, tasks, fields, unit hosts and
// addresses, metrics URLs) reach the operator's terminal quoted when
// they hold non-printable characters: no escape sequence gets through.
func TestStatQuotesNamesThatAreNotPrintable(t *testing.T) {
	const evil = "p\x1b]0;owned\x07\x1b[2J"
	s := &statSnapshot{
		at:      time.Now(),
		addr:    "tcp://127.0.0.1:7370",
		info:    &clusterInfo{ClusterID: "c\x1b[1m", Durable: true, Fsync: "batch\r"},
		metrics: []string{"http://h:1/metrics\x1b[A"},
		parts: []engine.PartitionStats{{
			Partition: evil, Rows: 2, Produced: 2,
			Fields: []engine.FieldStats{{Name: "f\x1b[31m", Produced: 2}},
			Tasks:  []engine.TaskStats{{Task: "t\u009b2J", Consumed: 1}}, // C1 CSI, in UTF-8
		}, {Partition: "plain name", Rows: 1}},
		units: []engine.UnitInfo{{ID: 1, Alive: true, Host: "h\x9b0m", Addrs: []string{"tcp://h:1\n"}}},
	}
	var one, watch bytes.Buffer
	require.NoError(t, s.print(&one))
	require.NoError(t, s.printWatch(&watch, s, time.Second))
	for name, out := range map[string]string{"print": one.String(), "printWatch": watch.String()} {
		t.Logf("%s:\n%s", name, out)
		assert.NotContains(t, out, "\x1b", name)
		assert.NotContains(t, out, "\x9b", name)
		assert.NotContains(t, out, "\u009b", name)
		assert.NotContains(t, out, "\x07", name)
		assert.NotContains(t, out, "\r", name)
		assert.Contains(t, out, `"p\x1b]0;owned\a\x1b[2J"`, name)
		assert.Contains(t, out, `"t\u009b2J"`, name)
		assert.Contains(t, out, "plain name", name, "printable names are left as they are")
	}
	for _, want := range []string{`"c\x1b[1m"`, `"batch\r"`, `"http://h:1/metrics\x1b[A"`, `"f\x1b[31m"`, `"h\x9b0m"`, `"tcp://h:1\n"`} {
		assert.Contains(t, one.String(), want)
	}
}

// TestErrorsPrintTerminalSafe: an error tq prints can carry names a peer
// chose; what could drive the terminal is escaped, lines and tabs stay.
func TestErrorsPrintTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"partition \"p\": not found":       "partition \"p\": not found",
		"key \x1b[2J\x1b[31mFAKE: lost":    `key \x1b[2J\x1b[31mFAKE: lost`,
		"a\rb\u0085c\xffd\u00e9\uFFFD":     `a\rb\u0085c\xffdé` + "\uFFFD",
		"two lines:\n\tthe second, tabbed": "two lines:\n\tthe second, tabbed",
	} {
		if got := terminalSafe(in); got != want {
			t.Errorf("terminalSafe(%q) = %q, want %q", in, got, want)
		}
	}
}

// tq stat shows what a unit holds in quarantine — the reservation of a
// same-host session that ended without a goodbye, its client alive —
// from the unit's UNIT_STATS, in the unit table, in --watch and in
// --json; "-" (nothing in --watch and --json) for a unit that did not
// answer. It used to show only the used bytes, which count the
// quarantined ones unexplained; --watch did not say it until later.
func TestStatShowsQuarantinedHolds(t *testing.T) {
	ucfg := storage.DefaultConfig()
	ucfg.Capacity = 16 << 20
	u, err := storage.NewUnit(1, ucfg)
	require.NoError(t, err)
	defer u.Close()
	srv := storage.NewServer(u, storage.ServerConfig{Quarantine: time.Hour})
	sock := filepath.Join(t.TempDir(), "unit.sock")
	ul, err := net.Listen("unix", sock)
	require.NoError(t, err)
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{}, 2)
	for _, l := range []net.Listener{ul, tl} {
		go func() { srv.Serve(l); served <- struct{}{} }()
	}
	defer func() { <-served; <-served }()
	defer srv.Close()

	storagetest.Quarantine(t, u, "unix://"+sock, 64<<10)
	ctx := t.Context()

	s := &statSnapshot{at: time.Now(), addr: "tcp://127.0.0.1:7370", units: []engine.UnitInfo{
		{ID: u.ID(), Incarnation: u.Incarnation(), Alive: true, Addrs: []string{"tcp://" + tl.Addr().String()}},
		{ID: 2, Alive: true, Capacity: 16 << 20}, // no address: no answer
	}}
	s.fresh = freshUnitStats(ctx, s.units, "")
	table := unitTable(t, s, 2)
	assert.Contains(t, table[0], "quarantined", "the table's header")
	assert.Contains(t, table[1], "64 KiB (1 session)", "unit 1's line")
	assert.Regexp(t, `^  2 +alive +0 B / 16 MiB +0% +- +0 `, table[2], "unit 2's line")

	// --watch says it on the unit's line, and nothing where there is
	// nothing to say.
	var watch bytes.Buffer
	require.NoError(t, s.printWatch(&watch, nil, time.Second))
	t.Logf("tq stat --watch:\n%s", watch.String())
	lines := strings.Split(watch.String(), "\n")
	i := slices.Index(lines, "STORAGE UNITS")
	require.GreaterOrEqual(t, i, 0, "no unit lines")
	require.Greater(t, len(lines), i+2)
	assert.Regexp(t, `^  1 .* 64 KiB \(1 session\) in quarantine *$`, lines[i+1], "unit 1's line")
	assert.NotContains(t, lines[i+2], "quarantine", "unit 2's line")

	j := s.json(nil)
	require.Len(t, j.Units, 2)
	require.NotNil(t, j.Units[0].Quarantined, "unit 1's quarantined bytes in --json")
	require.NotNil(t, j.Units[0].QuarantinedSessions, "unit 1's quarantined sessions in --json")
	assert.Equal(t, int64(64<<10), *j.Units[0].Quarantined)
	assert.Equal(t, int64(1), *j.Units[0].QuarantinedSessions)
	b, err := json.Marshal(j.Units[1])
	require.NoError(t, err)
	assert.NotContains(t, string(b), "quarantined", "a unit that did not answer")
}

// tq serve --name is "shown in tq stat": the storage units register it,
// and the unit table and --json say it (quoted, like the other names,
// when it is not printable). It was registered and shown nowhere.
func TestStatShowsTheUnitsName(t *testing.T) {
	s := startInProcess(t, "--name", "rack7-box3")
	ctx := t.Context()
	m, err := client.DialMeta(ctx, s.local, client.RemoteConfig{Name: "stat-test"})
	require.NoError(t, err)
	defer m.Close()
	snap, err := takeSnapshot(ctx, m, s.local, "")
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, snap.print(&out))
	t.Logf("tq stat:\n%s", out.String())
	lines := strings.Split(out.String(), "\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "used / capacity") })
	require.GreaterOrEqual(t, i, 0, "no unit table")
	require.Greater(t, len(lines), i+1)
	assert.Contains(t, lines[i], "name", "the table's header")
	assert.Contains(t, lines[i+1], "rack7-box3", "unit 1's line")

	b, err := json.Marshal(snap.json(nil))
	require.NoError(t, err)
	assert.Contains(t, string(b), `"name":"rack7-box3"`, "--json")

	snap.units[0].Name = "n\x1b[2J"
	out.Reset()
	require.NoError(t, snap.print(&out))
	assert.Contains(t, out.String(), `"n\x1b[2J"`)
	assert.NotContains(t, out.String(), "\x1b")
}

// tq stat skips a partition cleared between its listing and its stats
// (NOT_FOUND), but any other error fails the snapshot: it used to skip
// the partition too, and print a count short by it as the whole.
func TestStatSnapshotFailsOnAStatsError(t *testing.T) {
	srv := wire.NewServer(wire.ServerConfig{Hello: &wirepb.Hello{Role: "controller"}})
	srv.Handle(wire.OpPartitions, func(_ context.Context, _ *wire.Request, rw *wire.ReplyWriter) {
		rw.Reply(&wirepb.PartitionsReply{Partitions: []string{"cleared", "broken"}}, nil, nil)
	})
	srv.Handle(wire.OpStats, func(_ context.Context, req *wire.Request, rw *wire.ReplyWriter) {
		var pr wirepb.PartitionRequest
		if err := proto.Unmarshal(req.Body, &pr); err != nil {
			rw.Error(err)
			return
		}
		if pr.Partition == "cleared" {
			rw.Error(fmt.Errorf("partition %q: %w", pr.Partition, engine.ErrNotFound))
			return
		}
		rw.Error(fmt.Errorf("partition %q: the stats broke: %w", pr.Partition, engine.ErrCorrupt))
	})
	addr, m := dialFakeController(t, srv)
	_, err := takeSnapshot(t.Context(), m, addr, "")
	require.ErrorIs(t, err, engine.ErrCorrupt)
	require.ErrorContains(t, err, `"broken"`)
}

// tq stat says how many of a task's consumed rows are held (a loader's,
// fetched ahead): in the table, under --watch and in --json.
func TestStatShowsHeldRows(t *testing.T) {
	s := &statSnapshot{
		at: time.Now(), addr: "tcp://127.0.0.1:7370",
		parts: []engine.PartitionStats{{
			Partition: "train", Rows: 8, Produced: 8,
			Tasks: []engine.TaskStats{{Task: "actor", Consumed: 6, Held: 4}, {Task: "critic", Consumed: 2}},
		}},
	}
	var one, watch bytes.Buffer
	require.NoError(t, s.print(&one))
	require.NoError(t, s.printWatch(&watch, s, time.Second))
	for name, out := range map[string]string{"print": one.String(), "printWatch": watch.String()} {
		assert.Equal(t, 1, strings.Count(out, "(4 held)"), "%s:\n%s", name, out)
		assert.Equal(t, 1, strings.Count(out, "held"), "%s: a task holding nothing says nothing:\n%s", name, out)
	}
	js, err := json.Marshal(s.json(nil))
	require.NoError(t, err)
	assert.Contains(t, string(js), `"task":"actor","consumed":6,"held":4`)
}

// The unit table's pages and host columns say "-" for a unit that
// reported neither: one the controller knows only from its log (a
// restarted controller's units that never came back), whose pages read
// "0 B pre-faulted", a page size no unit has, and whose host was an
// empty cell.
func TestStatShowsNoPageSizeForAUnitThatReportedNone(t *testing.T) {
	s := &statSnapshot{at: time.Now(), addr: "tcp://127.0.0.1:7370", units: []engine.UnitInfo{
		{ID: 1, Alive: true, Capacity: 1 << 30, PageSize: 4 << 10},
		{ID: 2, Alive: true, Capacity: 1 << 30, PageSize: 2 << 20, HugePages: true},
		{ID: 3, Capacity: 1 << 30}, // from the log: never heard from since
	}}
	table := unitTable(t, s, 3)
	assert.Contains(t, table[1], " 4 KiB pre-faulted ")
	assert.Contains(t, table[2], " 2 MiB huge ")
	assert.NotContains(t, table[3], "0 B pre-faulted")
	assert.Regexp(t, `^  3 .* 0 +- +- +- *$`, table[3], "unit 3's segments, pages, host and name")
}

// unitTable prints s as tq stat does and returns its table of storage
// units from its header line on, which must be followed by at least
// units lines.
func unitTable(t *testing.T, s *statSnapshot, units int) []string {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, s.print(&out))
	t.Logf("tq stat:\n%s", out.String())
	lines := strings.Split(out.String(), "\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "used / capacity") })
	require.GreaterOrEqual(t, i, 0, "no unit table")
	require.Greater(t, len(lines), i+units)
	return lines[i:]
}

// isTerminal tells a terminal (a pseudo-terminal here) from a pipe, a
// file or a writer that is no file: tq stat --watch clears the screen
// only on a terminal.
func TestIsTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	require.NoError(t, unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	defer tty.Close()
	assert.True(t, isTerminal(tty), "a pseudo-terminal")

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	assert.False(t, isTerminal(w), "a pipe")
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	require.NoError(t, err)
	defer f.Close()
	assert.False(t, isTerminal(f), "a file")
	assert.False(t, isTerminal(&bytes.Buffer{}), "a buffer")
}
