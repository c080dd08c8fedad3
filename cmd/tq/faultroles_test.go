package main

// The client processes of the fault matrix (faultmatrix_test.go): writers
// and consumers, each this test binary re-executed with TQ_FM_ROLE set.
// Each keeps a journal, one line per event, written with one write(2) so
// that a SIGKILL leaves whole lines: what it attempted before sending and
// what was acknowledged after, so that the driver can tell which states
// of each key are acceptable.
//
//	writer:   P key ver     put of key at version ver attempted
//	          C key ver     clear of key attempted (ops on a key share versions)
//	          A key ver     acknowledged
//	          SP key        stream row put attempted; AS key acknowledged
//	          G key ver     a read found version ver, as it should
//	consumer: F key         a fetch returned the stream row
//	          R key         its bytes read back as put
//	both:     L key unit ns a read failed with ErrLost at ns (unix
//	                        nanoseconds); the cell was on unit
//	          V text        a violation seen on the spot
//	          E text        an error (information only)

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
)

const (
	fmKVPart     = "kv"
	fmStreamPart = "stream"
	fmTask       = "t"
	fmKeys       = 30 // keys per writer
)

func fmKey(w, i int) string { return fmt.Sprintf("w%d-k%02d", w, i) }

// fmValue is what writer w puts under key at version ver: a header that
// names them, then bytes derived from them. Most values are small, some
// cross the shm inline limit, a few are tens of KiB.
func fmValue(w int, key string, ver int) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%d", w, key, ver)
	x := h.Sum64() | 1
	var n int
	switch r := x % 100; {
	case r < 70:
		n = int(x >> 8 % 200)
	case r < 95:
		n = 200 + int(x>>8%4000)
	default:
		n = 4200 + int(x>>8%60000)
	}
	hdr := fmt.Sprintf("tqfm %d %s %d|", w, key, ver)
	b := make([]byte, len(hdr)+n)
	copy(b, hdr)
	for i := len(hdr); i < len(b); i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// fmWhose says whose value b is: ok when b is exactly fmValue(w, key, ver)
// for the writer, key and version its header names.
func fmWhose(b []byte) (w int, key string, ver int, ok bool) {
	hdr, _, found := strings.Cut(string(b[:min(len(b), 64)]), "|")
	if !found {
		return 0, "", 0, false
	}
	f := strings.Fields(hdr)
	if len(f) != 4 || f[0] != "tqfm" {
		return 0, "", 0, false
	}
	w, err1 := strconv.Atoi(f[1])
	ver, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		return 0, "", 0, false
	}
	return w, f[2], ver, string(fmValue(w, f[2], ver)) == string(b)
}

// describe names bytes read back, for a violation's message.
func fmDescribe(b []byte) string {
	if w, key, ver, ok := fmWhose(b); ok {
		return fmt.Sprintf("writer %d's %s at version %d", w, key, ver)
	}
	return fmt.Sprintf("%d unrecognized bytes %q", len(b), b[:min(len(b), 24)])
}

// fmOp is one attempted operation on a key.
type fmOp struct {
	ver   int
	clear bool
	acked bool
}

// fmHistory is every operation a writer attempted on one key, in order.
type fmHistory struct{ ops []fmOp }

func (h *fmHistory) attempt(ver int, clear bool) {
	h.ops = append(h.ops, fmOp{ver: ver, clear: clear})
}

func (h *fmHistory) ack(ver int) {
	for i := range h.ops {
		if h.ops[i].ver == ver {
			h.ops[i].acked = true
		}
	}
}

func (h *fmHistory) nextVer() int {
	if len(h.ops) == 0 {
		return 1
	}
	return h.ops[len(h.ops)-1].ver + 1
}

// candidates are the operations whose outcome the key may show: the last
// acknowledged one and every one attempted after it (those may or may
// not have happened); every one, and the key's absence, when none was
// acknowledged.
func (h *fmHistory) candidates() (ops []fmOp, absentOK bool) {
	last := -1
	for i, op := range h.ops {
		if op.acked {
			last = i
		}
	}
	if last < 0 {
		return h.ops, true
	}
	return h.ops[last:], false
}

// accepts reports whether a read may find version ver (absent: the key
// not there).
func (h *fmHistory) accepts(ver int, absent bool) bool {
	ops, absentOK := h.candidates()
	if absent && absentOK {
		return true
	}
	for _, op := range ops {
		if absent && op.clear || !absent && !op.clear && op.ver == ver {
			return true
		}
	}
	return false
}

// want describes what accepts accepts.
func (h *fmHistory) want() string {
	ops, absentOK := h.candidates()
	var s []string
	if absentOK {
		s = append(s, "absent")
	}
	for _, op := range ops {
		if op.clear {
			s = append(s, fmt.Sprintf("cleared (v%d)", op.ver))
		} else {
			s = append(s, fmt.Sprintf("v%d", op.ver))
		}
	}
	return strings.Join(s, " or ")
}

// fmJournal is a parsed journal.
type fmJournal struct {
	keys       map[string]*fmHistory
	streamP    map[string]bool // stream rows attempted
	streamA    map[string]bool // stream rows acknowledged
	fetched    []string        // stream rows fetches returned, in order
	lost       []fmLost
	violations []string
	acks       int // A and AS lines
	reads      int // G and R lines
}

type fmLost struct {
	key  string
	unit engine.UnitID
	at   time.Time
	err  string
}

// oneLine is err's message on one line, for a journal.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

func newFMJournal() *fmJournal {
	return &fmJournal{keys: map[string]*fmHistory{}, streamP: map[string]bool{}, streamA: map[string]bool{}}
}

func (j *fmJournal) hist(key string) *fmHistory {
	h := j.keys[key]
	if h == nil {
		h = &fmHistory{}
		j.keys[key] = h
	}
	return h
}

// parseFMJournal reads a journal; a file that does not exist is empty.
func parseFMJournal(path string) (*fmJournal, error) {
	j := newFMJournal()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		j.line(sc.Text())
	}
	return j, sc.Err()
}

func (j *fmJournal) line(l string) {
	kind, rest, _ := strings.Cut(l, " ")
	f := strings.Fields(rest)
	num := func(i int) int {
		if i >= len(f) {
			return -1
		}
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return -1
		}
		return n
	}
	switch {
	case kind == "V":
		j.violations = append(j.violations, rest)
	case kind == "E" || len(f) == 0:
	case kind == "P" || kind == "C":
		j.hist(f[0]).attempt(num(1), kind == "C")
	case kind == "A":
		j.hist(f[0]).ack(num(1))
		j.acks++
	case kind == "SP":
		j.streamP[f[0]] = true
	case kind == "AS":
		j.streamA[f[0]] = true
		j.acks++
	case kind == "F":
		j.fetched = append(j.fetched, f...)
	case kind == "G" || kind == "R":
		j.reads++
	case kind == "L":
		j.lost = append(j.lost, parseLost(f))
	}
}

// journal appends lines to a file, each batch with one write.
type fmLog struct{ f *os.File }

func (l fmLog) add(lines ...string) {
	if len(lines) == 0 {
		return
	}
	l.f.WriteString(strings.Join(lines, "\n") + "\n")
}

// fmMain runs a fault-matrix client role and returns the exit code.
func fmMain(role string) int {
	if role != "writer" && role != "consumer" {
		fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
		return 2
	}
	id, _ := strconv.Atoi(os.Getenv("FM_ID"))
	seed, _ := strconv.ParseUint(os.Getenv("FM_SEED"), 10, 64)
	path := os.Getenv("FM_LOG")
	past, err := parseFMJournal(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer f.Close()
	log := fmLog{f}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var c *client.Client
	for c == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err = client.Connect(cctx, os.Getenv("FM_ADDR"), client.ConnectConfig{Token: os.Getenv("TQ_TOKEN"), WaitForUnits: true,
			Name: fmt.Sprintf("%s-%d", role, id), Transport: os.Getenv("FM_TRANSPORT"), RDMA: rdma.Config{Device: "emu0"}})
		cancel()
		if ctx.Err() != nil {
			return 0
		}
		if err != nil {
			log.add("E connect: " + err.Error())
			time.Sleep(100 * time.Millisecond)
		}
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(seed, uint64(os.Getpid())))
	r := fmRole{c: c, kv: kvapi.New(c), log: log, id: id, j: past, rng: rng}
	for ctx.Err() == nil {
		// An operation runs to its end (or its own deadline) after SIGTERM.
		octx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if role == "writer" {
			r.writeOnce(octx)
		} else {
			r.consumeOnce(ctx, octx)
		}
		cancel()
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
	}
	return 0
}

type fmRole struct {
	c   *client.Client
	kv  *kvapi.KV
	log fmLog
	id  int
	j   *fmJournal // this writer's history, its past lives' included
	rng *rand.Rand
	row int // next stream row
}

func (r *fmRole) batch(w int, keys []string, vers []int) *engine.Batch {
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		vals[i] = fmValue(w, k, vers[i])
	}
	return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf(vals)})
}

func (r *fmRole) writeOnce(ctx context.Context) {
	switch p := r.rng.IntN(100); {
	case p < 40:
		r.put(ctx, 1)
	case p < 55:
		r.put(ctx, 3)
	case p < 65:
		key := fmKey(r.id, r.rng.IntN(fmKeys))
		h := r.j.hist(key)
		ver := h.nextVer()
		h.attempt(ver, true)
		r.log.add(fmt.Sprintf("C %s %d", key, ver))
		if err := r.kv.Clear(ctx, fmKVPart, []string{key}); err != nil {
			r.log.add(fmt.Sprintf("E clear %s %d: %v", key, ver, err))
			return
		}
		h.ack(ver)
		r.log.add(fmt.Sprintf("A %s %d", key, ver))
	case p < 85:
		r.putStream(ctx)
	default:
		r.verify(ctx, fmKey(r.id, r.rng.IntN(fmKeys)))
	}
}

// put writes n distinct keys at their next versions in one batch.
func (r *fmRole) put(ctx context.Context, n int) {
	idx := r.rng.Perm(fmKeys)[:n]
	keys := make([]string, n)
	vers := make([]int, n)
	lines := make([]string, n)
	for i, k := range idx {
		keys[i] = fmKey(r.id, k)
		h := r.j.hist(keys[i])
		vers[i] = h.nextVer()
		h.attempt(vers[i], false)
		lines[i] = fmt.Sprintf("P %s %d", keys[i], vers[i])
	}
	r.log.add(lines...)
	if _, err := r.kv.BatchPut(ctx, fmKVPart, keys, r.batch(r.id, keys, vers), nil); err != nil {
		r.log.add(fmt.Sprintf("E put %v: %v", keys, err))
		return
	}
	for i, k := range keys {
		r.j.hist(k).ack(vers[i])
		lines[i] = fmt.Sprintf("A %s %d", k, vers[i])
	}
	r.log.add(lines...)
}

// putStream writes four stream rows, each once, at version 0.
func (r *fmRole) putStream(ctx context.Context) {
	for r.j.streamP[fmt.Sprintf("w%d-s%d", r.id, r.row)] {
		r.row++ // rows a past life attempted
	}
	keys := make([]string, 4)
	lines := make([]string, 4)
	for i := range keys {
		keys[i] = fmt.Sprintf("w%d-s%d", r.id, r.row)
		r.j.streamP[keys[i]] = true
		r.row++
		lines[i] = "SP " + keys[i]
	}
	r.log.add(lines...)
	if _, err := r.kv.BatchPut(ctx, fmStreamPart, keys, r.batch(r.id, keys, make([]int, 4)), nil); err != nil {
		r.log.add(fmt.Sprintf("E stream put %v: %v", keys, err))
		return
	}
	for i, k := range keys {
		lines[i] = "AS " + k
	}
	r.log.add(lines...)
}

// verify reads key and checks it against the writer's history.
func (r *fmRole) verify(ctx context.Context, key string) {
	h := r.j.hist(key)
	b, err := r.kv.BatchGetCopy(ctx, fmKVPart, []string{key}, "v")
	switch {
	case err == nil:
		got := b.Col("v").RowBytes(0)
		w, k, ver, ok := fmWhose(got)
		if !ok || w != r.id || k != key || !h.accepts(ver, false) {
			r.log.add(fmt.Sprintf("V read %s: got %s, want %s", key, fmDescribe(got), h.want()))
			return
		}
		r.log.add(fmt.Sprintf("G %s %d", key, ver))
	case errors.Is(err, engine.ErrNotFound):
		if !h.accepts(0, true) {
			r.log.add(fmt.Sprintf("V read %s: not found, want %s (%v)", key, h.want(), err))
		}
	case errors.Is(err, engine.ErrLost):
		at := time.Now()
		if unit := cellUnit(ctx, r.c, fmKVPart, key); unit != 0 {
			r.log.add(fmt.Sprintf("L %s %d %d %s", key, unit, at.UnixNano(), oneLine(err)))
		} else {
			// The controller did not answer (a fault): nothing to judge.
			r.log.add(fmt.Sprintf("E read %s lost, its cell's unit unknown: %v", key, err))
		}
	default:
		r.log.add(fmt.Sprintf("E read %s: %v", key, err))
	}
}

// cellUnit is the unit that holds key's cell of field v (0 if unknown).
func cellUnit(ctx context.Context, c *client.Client, part, key string) engine.UnitID {
	m, err := c.MetaByKeys(ctx, part, []string{key}, []string{"v"}, false)
	if err != nil || len(m.Cells["v"]) != 1 {
		return 0
	}
	return m.Cells["v"][0].Unit
}

// consumeOnce fetches up to four stream rows (blocking, with a deadline
// that often ends the wait: abandoned fetches must take nothing) and
// checks their bytes.
func (r *fmRole) consumeOnce(stop, ctx context.Context) {
	// Half the fetches end by a deadline, half are cancelled (issue 11's
	// fourth case: a cancelled fetch took the next row).
	wait := time.Duration(20+r.rng.IntN(1500)) * time.Millisecond
	fctx, cancel := context.WithTimeout(stop, wait)
	if r.rng.IntN(2) == 0 {
		fctx, cancel = context.WithCancel(stop)
		time.AfterFunc(wait, cancel)
	}
	m, err := r.c.GetMeta(fctx, client.MetaRequest{Partition: fmStreamPart, Task: fmTask, BatchSize: 4, Fields: []string{"v"}, Wait: true})
	cancel()
	if err != nil {
		if fctx.Err() == nil {
			r.log.add(fmt.Sprintf("E fetch: %v", err))
		}
		return
	}
	if len(m.Indexes) == 0 {
		return
	}
	keys, err := r.c.KeysOf(ctx, fmStreamPart, m.Indexes)
	if err != nil {
		r.log.add(fmt.Sprintf("V fetched rows %v whose keys are unknown: %v", m.Indexes, err))
		return
	}
	r.log.add("F " + strings.Join(keys, " "))
	checkStreamRows(ctx, r.c, keys, m, r.log.add)
}

// checkStreamRows reads the rows of m (keys are theirs) and reports each:
// R when it holds its own bytes, L when lost, V otherwise.
func checkStreamRows(ctx context.Context, c *client.Client, keys []string, m *engine.BatchMeta, add func(...string)) {
	b, err := c.GetCopy(ctx, m)
	if err == nil {
		defer b.Release()
	}
	for i, key := range keys {
		var got []byte
		var rerr error
		if err == nil {
			got = b.Col("v").RowBytes(i)
		} else {
			// One row at a time: some may be lost, others not.
			var one *engine.Batch
			one, rerr = kvapi.New(c).BatchGetCopy(ctx, fmStreamPart, []string{key}, "v")
			if rerr == nil {
				got = one.Col("v").RowBytes(0)
			}
		}
		switch {
		case rerr == nil:
			w, k, ver, ok := fmWhose(got)
			if !ok || k != key || ver != 0 || !strings.HasPrefix(key, fmt.Sprintf("w%d-", w)) {
				add(fmt.Sprintf("V stream row %s: got %s", key, fmDescribe(got)))
				continue
			}
			add("R " + key)
		case errors.Is(rerr, engine.ErrLost):
			add(fmt.Sprintf("L %s %d %d %s", key, m.Cells["v"][i].Unit, time.Now().UnixNano(), oneLine(rerr)))
		default:
			add(fmt.Sprintf("E read stream row %s: %v", key, rerr))
		}
	}
}

// parseLost reads the fields of an L line: key unit ns error...
func parseLost(f []string) fmLost {
	l := fmLost{key: f[0]}
	if len(f) > 1 {
		u, _ := strconv.Atoi(f[1])
		l.unit = engine.UnitID(u)
	}
	if len(f) > 2 {
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		l.at = time.Unix(0, ns)
	}
	if len(f) > 3 {
		l.err = strings.Join(f[3:], " ")
	}
	return l
}
