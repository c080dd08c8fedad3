package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/transport/tcp"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// stat prints a cluster's partitions, rows, production and consumption
// progress per task, and its storage units with their capacity; with
// --watch it redraws that view every --interval with progress bars and
// the rates since the last refresh, and with --json it prints the same
// figures as JSON (one object per line with --watch); --watch into a
// pipe or a file puts a line with the time, not the escape codes that
// clear a terminal, before each refresh. The text views
// show the --limit partitions with the most rows and say how many more
// there are; --json lists every partition. --partition GLOB keeps only
// the partitions it matches, in every view.
func stat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	token := fs.String("token", "", "the cluster's shared secret (default: $TQ_TOKEN, else the token file in this user's data directory). Prefer $TQ_TOKEN: other users of this host see a command line (ps).")
	timeout := durationFlag(fs, "timeout", 10*time.Second, "give up after this `duration` (with --watch: on each refresh)")
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted, with progress bars and rates since the last refresh")
	interval := durationFlag(fs, "interval", 2*time.Second, "the `duration` between refreshes with --watch")
	asJSON := fs.Bool("json", false, "print JSON (with --watch: one object per line per refresh): every partition --partition matches, whatever --limit")
	limit := fs.Int("limit", 20, "show at most this many partitions, those with the most rows (rows + reserved; ties by name), and say how many more there are; 0: all. Not for --json")
	glob := fs.String("partition", "", "show only the partitions whose names match this glob (path.Match: *, ?, [a-z], \\ escapes), in every view")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tq stat [--token T] [--watch [--interval D]] [--json] [--limit N] [--partition GLOB] ADDR   (tcp://host:port or unix:///path)")
		fs.PrintDefaults()
	}
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		if len(pos) == 0 {
			return fmt.Errorf("stat needs the controller's address")
		}
		return fmt.Errorf("stat takes one address, got %d arguments: %q", len(pos), pos)
	}
	if *interval <= 0 {
		return fmt.Errorf("--interval %v: must be positive", *interval)
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", *timeout)
	}
	if err := checkStatFlags(fs, *watch); err != nil {
		return err
	}
	if *limit < 0 {
		return fmt.Errorf("--limit %d: must not be negative (0 shows every partition)", *limit)
	}
	if _, err := path.Match(*glob, ""); err != nil {
		return fmt.Errorf("--partition %q: %w", *glob, err)
	}
	addr := pos[0]
	if err := checkDialAddr("stat", "address", addr); err != nil {
		return err
	}
	tok, err := client.FindToken(*token)
	if err != nil {
		return err
	}
	dctx, cancel, explain := flagTimeout(ctx, "stat", *timeout)
	m, err := client.DialMeta(dctx, addr, client.RemoteConfig{Token: tok, Name: "tq-stat"})
	err = explain(err)
	cancel()
	if err != nil {
		return err
	}
	defer m.Close()
	take := func() (*statSnapshot, error) {
		ctx, cancel, explain := flagTimeout(ctx, "stat", *timeout)
		defer cancel()
		s, err := takeSnapshot(ctx, m, addr, tok)
		if err != nil {
			return nil, explain(err)
		}
		s.match(*glob)
		s.limit = *limit
		return s, nil
	}
	if !*watch {
		s, err := take()
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSONLine(stdout, s.json(nil))
		}
		return s.print(stdout)
	}
	var prev *statSnapshot
	// Each refresh clears a terminal's screen; into a pipe or a file,
	// where escape codes are noise, a line with the time comes before it.
	tty := isTerminal(stdout)
	frame := func() string {
		if tty {
			return clearScreen
		}
		return fmt.Sprintf("--- %s ---\n", time.Now().Format(time.TimeOnly))
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		s, err := take()
		if err != nil && ctx.Err() != nil {
			return nil // interrupted
		}
		switch {
		case err != nil && *asJSON:
			return err
		case err != nil:
			// A controller that went away for a moment: say so and retry.
			fmt.Fprintf(stdout, "%s%s: %s (retrying every %v)\n", frame(), time.Now().Format(time.TimeOnly), printable(err.Error()), *interval)
		case *asJSON:
			if err := writeJSONLine(stdout, s.json(prev)); err != nil {
				return err
			}
			prev = s
		default:
			fmt.Fprint(stdout, frame())
			if err := s.printWatch(stdout, prev, *interval); err != nil {
				return err
			}
			prev = s
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// checkStatFlags refuses --interval without --watch, as tq unit refuses
// a flag its verb does not use: the one-shot view takes one look, and
// `tq stat --interval 1s ADDR` would print it once and exit, the interval
// dropped without a word. (--limit with --json is not refused: --json
// lists every partition whatever --limit says, on purpose -- it is for
// scripts, which want them all -- as -h and README say.)
func checkStatFlags(fs *flag.FlagSet, watch bool) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "interval" && !watch {
			err = errors.New("stat: --interval is for --watch; without --watch it does nothing")
		}
	})
	return err
}

// printable is s as the human views print it: as is when every rune is
// printable, else Go-quoted ("\x1b[2J"). Names come from whoever holds
// the token; raw, they could drive the operator's terminal with escape
// sequences. (--json escapes them itself.)
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func printables(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = printable(s)
	}
	return out
}

// clearScreen moves the cursor home and clears the terminal (ANSI):
// tq stat --watch writes it before each refresh on a terminal.
const clearScreen = "\x1b[H\x1b[2J"

// statSnapshot is what one look at the cluster found.
type statSnapshot struct {
	at      time.Time
	addr    string
	info    *clusterInfo // nil when the controller did not say
	parts   []engine.PartitionStats
	units   []engine.UnitInfo
	metrics []string
	// fresh is the UNIT_STATS reply of each unit that answered (see
	// freshUnitStats): what it holds in quarantine, which the
	// controller does not hear of, is only there.
	fresh map[engine.UnitID]*wirepb.UnitStats
	// total is how many partitions the controller holds, those --partition
	// leaves out of parts included; glob is --partition ("": every one).
	total int
	glob  string
	// limit: the text views show at most this many partitions (0: all);
	// see shown.
	limit int
}

// match keeps in s.parts the partitions whose names match glob, a valid
// path.Match pattern ("": every partition).
func (s *statSnapshot) match(glob string) {
	s.total, s.glob = len(s.parts), glob
	if glob == "" {
		return
	}
	s.parts = slices.DeleteFunc(s.parts, func(st engine.PartitionStats) bool {
		ok, _ := path.Match(glob, st.Partition)
		return !ok
	})
}

// shown is what the text views show of s.parts: the s.limit partitions
// with the most rows (rows and reserved ones; ties by name), most first,
// and how many more there are. A busy cluster's largest partitions are
// where its data is; --partition finds the others.
func (s *statSnapshot) shown() (parts []engine.PartitionStats, more int) {
	parts = slices.Clone(s.parts)
	slices.SortFunc(parts, func(a, b engine.PartitionStats) int {
		return cmp.Or(cmp.Compare(b.Rows+b.Reserved, a.Rows+a.Reserved), strings.Compare(a.Partition, b.Partition))
	})
	if s.limit > 0 && len(parts) > s.limit {
		return parts[:s.limit], len(parts) - s.limit
	}
	return parts, 0
}

// counted says how many partitions there are: "N partitions", or with
// --partition "M of N partitions match GLOB".
func (s *statSnapshot) counted() string {
	if s.glob == "" {
		return fmt.Sprintf("%d partitions", len(s.parts))
	}
	return fmt.Sprintf("%d of %d partitions match %s", len(s.parts), s.total, strconv.Quote(s.glob))
}

// moreLine says how many partitions the text views left out by --limit.
func moreLine(more int) string {
	return fmt.Sprintf("  and %d more partitions, with as many rows or fewer (--limit 0 shows all, --partition GLOB picks)", more)
}

type clusterInfo struct {
	ClusterID string `json:"cluster_id"`
	Epoch     uint64 `json:"epoch"`
	Durable   bool   `json:"durable"`
	Fsync     string `json:"fsync,omitempty"`
	LogBytes  int64  `json:"log_bytes_since_snapshot"`
}

func takeSnapshot(ctx context.Context, m *client.RemoteMeta, addr, tok string) (*statSnapshot, error) {
	s := &statSnapshot{at: time.Now(), addr: addr}
	// A page of partitions a round trip (STATS_PAGE), or, from an older
	// controller, one per partition.
	var err error
	if s.parts, err = m.AllStats(ctx); err != nil {
		return nil, err
	}
	if s.units, err = m.Units(ctx); err != nil {
		return nil, err
	}
	if ci, err := m.ClusterInfo(ctx); err == nil {
		s.info = &clusterInfo{ClusterID: ci.ClusterId, Epoch: ci.Epoch, Durable: ci.Durable, Fsync: ci.Fsync, LogBytes: ci.LogBytes}
		s.metrics = ci.Metrics
	}
	s.fresh = freshUnitStats(ctx, s.units, tok)
	return s, nil
}

// print writes the one-shot text view.
func (s *statSnapshot) print(stdout io.Writer) error {
	fmt.Fprintf(stdout, "controller %s: %s, %d storage units\n", printable(s.addr), s.counted(), len(s.units))
	s.printCluster(stdout)
	if shown, more := s.shown(); len(shown) > 0 {
		fmt.Fprintln(stdout, "\nPARTITIONS")
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  partition\trows\treserved\tkeys\tproduced\tfields")
		var taskLines []string
		for _, st := range shown {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\n", printable(st.Partition), st.Rows, st.Reserved, st.Keys,
				progress(st.Produced, st.Rows+st.Reserved), strings.Join(fieldList(st), ", "))
			for _, t := range st.Tasks {
				taskLines = append(taskLines, fmt.Sprintf("  %s\t%s\t%s%s", printable(st.Partition), printable(t.Task), progress(t.Consumed, st.Rows+st.Reserved), heldString(t.Held)))
			}
		}
		tw.Flush()
		if more > 0 {
			fmt.Fprintln(stdout, moreLine(more))
		}
		if len(taskLines) > 0 {
			fmt.Fprintln(stdout, "\nCONSUMPTION")
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  partition\ttask\tconsumed")
			for _, l := range taskLines {
				fmt.Fprintln(tw, l)
			}
			tw.Flush()
		}
	}
	return s.printUnits(stdout)
}

func (s *statSnapshot) printCluster(w io.Writer) {
	if s.info == nil {
		return
	}
	state := "in memory only"
	if s.info.Durable {
		state = fmt.Sprintf("durable (fsync %s), log %s since the last snapshot", printable(s.info.Fsync), bytesString(s.info.LogBytes))
	}
	fmt.Fprintf(w, "cluster %s, controller start %d, state %s\n", printable(s.info.ClusterID), s.info.Epoch, state)
	if len(s.metrics) > 0 {
		fmt.Fprintf(w, "metrics %s\n", strings.Join(printables(s.metrics), " "))
	}
}

func fieldList(st engine.PartitionStats) []string {
	var fields []string
	for _, f := range st.Fields {
		if f.Produced == 0 {
			continue
		}
		d := fmt.Sprintf("%s %v", printable(f.Name), f.DType)
		if f.Shape != nil {
			d += f.Shape.String()
		} else {
			d += " " + f.Kind.String()
		}
		fields = append(fields, d)
	}
	return fields
}

func (s *statSnapshot) printUnits(stdout io.Writer) error {
	fmt.Fprintln(stdout, "\nSTORAGE UNITS")
	if len(s.units) == 0 {
		fmt.Fprintln(stdout, "  none registered")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  unit\tstate\tused / capacity\tquarantined\tsegments\tpages\thost\tname\taddresses")
	for _, u := range s.units {
		// A unit the controller knows only from its log (never heard
		// from since a restart) has reported no page size, nor a host.
		pages := "-"
		switch {
		case u.PageSize > 0 && u.HugePages:
			pages = bytesString(u.PageSize) + " huge"
		case u.PageSize > 0:
			pages = bytesString(u.PageSize) + " pre-faulted"
		}
		host := u.Host
		if len(host) > 8 {
			host = host[:8]
		}
		host = printable(host)
		if host == "" {
			host = "-"
		}
		name := "-" // tq serve --name
		if u.Name != "" {
			name = printable(u.Name)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s / %s  %s\t%s\t%d\t%s\t%s\t%s\t%s\n", u.ID, unitState(u), bytesString(u.Used), bytesString(u.Capacity),
			percent(u.Used, u.Capacity), s.quarantined(u.ID), u.Segments, pages, host, name, strings.Join(printables(showAddrs(u.Addrs)), " "))
	}
	return tw.Flush()
}

// quarantined says what a unit holds in quarantine, part of its used
// bytes: the holds of same-host sessions that ended without a goodbye
// while their client lives (storage's quarantine.go); "-" when the unit
// did not answer UNIT_STATS.
func (s *statSnapshot) quarantined(id engine.UnitID) string {
	st, ok := s.fresh[id]
	switch {
	case !ok:
		return "-"
	case st.QuarantinedSessions == 1:
		return bytesString(st.Quarantined) + " (1 session)"
	case st.QuarantinedSessions > 1:
		return fmt.Sprintf("%s (%d sessions)", bytesString(st.Quarantined), st.QuarantinedSessions)
	}
	return bytesString(st.Quarantined)
}

func unitState(u engine.UnitInfo) string {
	state := "alive"
	if !u.Alive {
		state = "LOST"
		if !u.LastHeartbeat.IsZero() {
			state += fmt.Sprintf(" (silent %v)", time.Since(u.LastHeartbeat).Round(time.Second))
		}
	}
	if u.Draining {
		state += ", draining"
	}
	return state
}

// printWatch writes the --watch view: progress bars per partition and
// task, and rates since prev (nil on the first refresh).
func (s *statSnapshot) printWatch(w io.Writer, prev *statSnapshot, interval time.Duration) error {
	fmt.Fprintf(w, "tq stat %s   %s   every %v (Ctrl-C to stop)\n", printable(s.addr), s.at.Format(time.TimeOnly), interval)
	s.printCluster(w)
	r := s.rates(prev)
	shown, more := s.shown()
	switch {
	case len(s.parts) == 0 && s.glob != "":
		fmt.Fprintf(w, "\n%s\n", s.counted())
	case len(s.parts) == 0:
		fmt.Fprintln(w, "\nno partitions")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, st := range shown {
		total := st.Rows + st.Reserved
		// No tabs: the line does not widen the columns below it.
		fmt.Fprintf(tw, "\n%s (%d rows, %d keys)\n", printable(st.Partition), total, st.Keys)
		fmt.Fprintf(tw, "  produced\t%s\t%s\t%s\t\n", bar(st.Produced, total), progress(st.Produced, total), rateString(r.produced, st.Partition, ""))
		for _, t := range st.Tasks {
			fmt.Fprintf(tw, "  %s\t%s\t%s%s\t%s\t\n", printable(t.Task), bar(t.Consumed, total), progress(t.Consumed, total), heldString(t.Held), rateString(r.consumed, st.Partition, t.Task))
		}
	}
	tw.Flush()
	if more > 0 {
		fmt.Fprintf(w, "\n%s\n", moreLine(more))
	}
	fmt.Fprintln(w, "\nSTORAGE UNITS")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, u := range s.units {
		used := fmt.Sprintf("%s / %s", bytesString(u.Used), bytesString(u.Capacity))
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t\n", u.ID, unitState(u), bar(int(u.Used>>10), int(u.Capacity>>10)), used, r.usedString(u.ID), s.inQuarantine(u.ID))
	}
	return tw.Flush()
}

// inQuarantine is the --watch view's word on what a unit holds in
// quarantine: as the table says it (see quarantined), when it holds
// any; nothing otherwise, or when the unit did not answer.
func (s *statSnapshot) inQuarantine(id engine.UnitID) string {
	if st, ok := s.fresh[id]; !ok || st.Quarantined == 0 && st.QuarantinedSessions == 0 {
		return ""
	}
	return s.quarantined(id) + " in quarantine"
}

// bar draws n of total as a 24-character progress bar.
func bar(n, total int) string {
	const width = 24
	filled := 0
	if total > 0 {
		filled = min(width, max(0, n*width/total))
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

// statRates are per-second changes since the previous snapshot.
type statRates struct {
	ok       bool
	produced map[[2]string]float64 // {partition, ""}
	consumed map[[2]string]float64 // {partition, task}
	used     map[engine.UnitID]float64
}

func (s *statSnapshot) rates(prev *statSnapshot) statRates {
	r := statRates{produced: map[[2]string]float64{}, consumed: map[[2]string]float64{}, used: map[engine.UnitID]float64{}}
	if prev == nil {
		return r
	}
	dt := s.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		return r
	}
	r.ok = true
	old := map[string]engine.PartitionStats{}
	for _, st := range prev.parts {
		old[st.Partition] = st
	}
	for _, st := range s.parts {
		o, found := old[st.Partition]
		if !found || !o.Created.Equal(st.Created) {
			continue // new, or cleared and created again: no rate yet
		}
		r.produced[[2]string{st.Partition, ""}] = float64(st.Produced-o.Produced) / dt
		for _, t := range st.Tasks {
			for _, ot := range o.Tasks {
				if ot.Task == t.Task {
					r.consumed[[2]string{st.Partition, t.Task}] = float64(t.Consumed-ot.Consumed) / dt
				}
			}
		}
	}
	for _, u := range s.units {
		for _, ou := range prev.units {
			if ou.ID == u.ID {
				r.used[u.ID] = float64(u.Used-ou.Used) / dt
			}
		}
	}
	return r
}

func rateString(m map[[2]string]float64, partition, task string) string {
	v, ok := m[[2]string{partition, task}]
	if !ok {
		return ""
	}
	return fmt.Sprintf("%.1f rows/s", v)
}

func (r statRates) usedString(id engine.UnitID) string {
	v, ok := r.used[id]
	if !ok {
		return ""
	}
	sign := "+"
	if v < 0 {
		sign, v = "-", -v
	}
	return fmt.Sprintf("%s%s/s", sign, bytesString(int64(v)))
}

// The --json form.
type statJSON struct {
	Time       time.Time       `json:"time"`
	Controller string          `json:"controller"`
	Cluster    *clusterInfo    `json:"cluster,omitempty"`
	Metrics    []string        `json:"metrics"`
	Partitions []partitionJSON `json:"partitions"`
	Units      []unitJSON      `json:"units"`
}

type partitionJSON struct {
	Partition string      `json:"partition"`
	Rows      int         `json:"rows"`
	Reserved  int         `json:"reserved"`
	Keys      int         `json:"keys"`
	Produced  int         `json:"produced"`
	Fields    []fieldJSON `json:"fields"`
	Tasks     []taskJSON  `json:"tasks"`
	// ProducedPerSecond is the rate since the previous refresh (--watch),
	// absent on the first.
	ProducedPerSecond *float64 `json:"produced_per_second,omitempty"`
}

type fieldJSON struct {
	Name     string `json:"name"`
	DType    string `json:"dtype"`
	Produced int    `json:"produced"`
}

type taskJSON struct {
	Task     string `json:"task"`
	Consumed int    `json:"consumed"`
	// Held: of Consumed, the rows held fetches hold (a loader's, fetched
	// ahead), which may still come back.
	Held              int      `json:"held"`
	ConsumedPerSecond *float64 `json:"consumed_per_second,omitempty"`
}

type unitJSON struct {
	ID       engine.UnitID `json:"id"`
	Name     string        `json:"name"` // tq serve --name
	Alive    bool          `json:"alive"`
	Draining bool          `json:"draining"`
	Used     int64         `json:"used_bytes"`
	Capacity int64         `json:"capacity_bytes"`
	Segments int64         `json:"segments"`
	Addrs    []string      `json:"addresses"`
	// Quarantined and QuarantinedSessions are what the unit holds in
	// quarantine (see quarantined), absent when it did not answer.
	Quarantined         *int64 `json:"quarantined_bytes,omitempty"`
	QuarantinedSessions *int64 `json:"quarantined_sessions,omitempty"`
}

func (s *statSnapshot) json(prev *statSnapshot) statJSON {
	r := s.rates(prev)
	out := statJSON{Time: s.at, Controller: s.addr, Cluster: s.info, Metrics: s.metrics, Partitions: []partitionJSON{}, Units: []unitJSON{}}
	if out.Metrics == nil {
		out.Metrics = []string{}
	}
	rate := func(m map[[2]string]float64, k [2]string) *float64 {
		if v, ok := m[k]; ok {
			return &v
		}
		return nil
	}
	for _, st := range s.parts {
		p := partitionJSON{Partition: st.Partition, Rows: st.Rows, Reserved: st.Reserved, Keys: st.Keys, Produced: st.Produced,
			Fields: []fieldJSON{}, Tasks: []taskJSON{}, ProducedPerSecond: rate(r.produced, [2]string{st.Partition, ""})}
		for _, f := range st.Fields {
			p.Fields = append(p.Fields, fieldJSON{Name: f.Name, DType: f.DType.String(), Produced: f.Produced})
		}
		for _, t := range st.Tasks {
			p.Tasks = append(p.Tasks, taskJSON{Task: t.Task, Consumed: t.Consumed, Held: t.Held, ConsumedPerSecond: rate(r.consumed, [2]string{st.Partition, t.Task})})
		}
		out.Partitions = append(out.Partitions, p)
	}
	for _, u := range s.units {
		uj := unitJSON{ID: u.ID, Name: u.Name, Alive: u.Alive, Draining: u.Draining, Used: u.Used, Capacity: u.Capacity, Segments: u.Segments, Addrs: u.Addrs}
		if st, ok := s.fresh[u.ID]; ok {
			uj.Quarantined, uj.QuarantinedSessions = &st.Quarantined, &st.QuarantinedSessions
		}
		out.Units = append(out.Units, uj)
	}
	return out
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func progress(n, total int) string {
	if total == 0 {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d %s", n, total, percent(int64(n), int64(total)))
}

func percent(n, total int64) string {
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(total))
}

// freshUnitStats asks each live unit for its current numbers (the
// controller only has those of the last heartbeat), sets them in units,
// and returns the replies by unit; units that do not answer within a
// second keep the heartbeat's and have none.
func freshUnitStats(ctx context.Context, units []engine.UnitInfo, token string) map[engine.UnitID]*wirepb.UnitStats {
	// $TQ_REQUIRE_SERVER_PROOF holds for the units too (DialMeta
	// already refused a bad value).
	require, _ := client.RequireServerProof(false)
	tr := tcp.New(tcp.Config{Token: token, Conns: 1, Name: "tq-stat", Conn: wire.ConnConfig{RequireServerProof: require}})
	defer tr.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := map[engine.UnitID]*wirepb.UnitStats{}
	for i := range units {
		u := &units[i]
		if !u.Alive {
			continue
		}
		peer, _, ok := client.PickAddr(*u, client.HostID())
		if !ok {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := tr.DialConn(ctx, peer)
			if err != nil {
				return
			}
			defer c.Close()
			st, err := c.Stats(ctx)
			if err != nil {
				return
			}
			u.Used, u.Capacity, u.Segments, u.PageSize, u.HugePages = st.Used, st.Capacity, st.Segments, st.PageSize, st.HugePages
			mu.Lock()
			fresh[u.ID] = st
			mu.Unlock()
		})
	}
	wg.Wait()
	return fresh
}

// showAddrs marks an emulated RDMA device (csrc/emu.c) as such: it moves
// bytes between processes of one host, and is no NIC.
func showAddrs(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a
		if strings.HasPrefix(a, "rdma://emu") {
			out[i] += "(emulated)"
		}
	}
	return out
}

// heldString says how many of a task's consumed rows are held (""
// for none).
func heldString(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d held)", n)
}
