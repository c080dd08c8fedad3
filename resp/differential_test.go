package resp

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/controller/journal"
)

// TestDataCommandsMatchRedis sends seeded random sequences of the data
// commands TQ serves (SET, GET, MSET, MGET, DEL, UNLINK, EXISTS, TYPE,
// HSET, HMSET, HGET, HMGET, HGETALL, HDEL, HKEYS, HLEN, HEXISTS, KEYS,
// SCAN, DBSIZE, FLUSHDB, SELECT), their names in any case, over a few keys, fields and values (empty,
// binary, "0", "-1", long, over 64 KiB) to TQ's endpoint and to a real
// redis-server (skipped when it is not installed), and compares the
// replies byte for byte. A command may use a key of the other type (GET
// of a hash, HSET of a string). TQ is sent pipelines of 1 to 8 commands
// on connections that are reopened now and then (so they start on an
// event loop again), by an endpoint in memory and by one with the
// durable log, seed by seed. Now and then a few commands go in a
// MULTI … EXEC (as redis-py's default pipeline sends them), compared
// there as QUEUED and then as the elements of EXEC's array, while
// redis-server runs them one by one: "runs them in order and answers
// their replies as an array, as Redis does" (Commands, MULTI).
//
// Where wire/resp.md says TQ differs on purpose, the test normalizes,
// each case citing its line:
//
//   - Wrong types. "A key written with SET is a hash with the one field
//     value" and "GET: Field value, or nil when the key or the field is
//     absent" (The data model, Fields; Commands, GET): where Redis
//     answers WRONGTYPE, TQ's reply is compared with the command run on
//     the key as TQ holds it (a string is the field value; a hash has no
//     field value), and an HSET or HMSET of a string key, which TQ
//     makes, is undone on TQ with HDEL.
//   - SET of a hash key. "the key's other fields stay (after HSET k f 1,
//     SET k v leaves f … where Redis would make k a string)" (Commands,
//     SET): the key's hash fields are dropped on TQ with HDEL after.
//   - HDEL of a hash's last field. "The key keeps its other fields and
//     its tags, even with no field left" (Commands, HDEL): where Redis
//     deletes the key, it is deleted on TQ with DEL after.
//   - No field is named value: "TYPE answers string for a key whose only
//     field is value" (The data model, Fields).
//   - SET's options are not sent: "Options (EX, PX, NX, XX, GET,
//     KEEPTTL) are refused … TQ has no expiry, and no conditional set
//     yet" (Commands, SET); TestErrorsMatchRedis compares the refusals.
//   - Orders. HGETALL and HKEYS are compared sorted by field ("list
//     the fields in name order (by bytes), where Redis lists a small
//     hash's in the order they were first written", Commands, HGETALL),
//     KEYS sorted ("Listed in creation order, as SCAN walks", Commands,
//     KEYS), and SCAN by the sorted keys a whole walk lists, repeats
//     dropped ("Walks the connection's partition in creation order. The
//     cursor is the creation sequence number", Commands, SCAN): the
//     cursors differ.
//   - SELECT n is Redis's database n and TQ's partition n ("go-redis
//     DB: 3 reads and writes partition 3", The data model, Partitions).
//
// Keys and fields are non-empty UTF-8 ("Keys, field names and partition
// names are non-empty UTF-8 text", The data model, Names). The reply
// TQ's reconciling commands get is checked too.
//
// TQ_DIFF_SEEDS=n runs n seeds (default 5), TQ_DIFF_SEED=s the one seed
// s, TQ_DIFF_COMMANDS=n that many commands each (default 300).
func TestDataCommandsMatchRedis(t *testing.T) {
	rd := startRedis(t)
	e := newEndpoint(t, Config{})
	seeds := []uint64{1, 2, 3, 4, 5}
	if s := os.Getenv("TQ_DIFF_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "TQ_DIFF_SEEDS")
		seeds = seeds[:0]
		for i := range n {
			seeds = append(seeds, uint64(i+1))
		}
	}
	if s := os.Getenv("TQ_DIFF_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "TQ_DIFF_SEED")
		seeds = []uint64{n}
	}
	commands := 300
	if s := os.Getenv("TQ_DIFF_COMMANDS"); s != "" {
		var err error
		commands, err = strconv.Atoi(s)
		require.NoError(t, err, "TQ_DIFF_COMMANDS")
	}
	// Seeds alternate between an endpoint of the in-memory controller
	// and one with the durable log, whose writes wait for it and whose
	// SET leaves the event loop (wire/resp.md, How connections are
	// served).
	durable := newDurableEndpoint(t, journal.FsyncBatch)
	for n, seed := range seeds {
		tqAddr, kind := e.addr, "in memory"
		if n%2 == 1 {
			tqAddr, kind = durable.addr, "durable"
		}
		t.Run(fmt.Sprintf("seed %d %s", seed, kind), func(t *testing.T) {
			d := &differ{t: t, seed: seed, rnd: rand.New(rand.NewPCG(seed, 0)), tqAddr: tqAddr, rdAddr: rd}
			d.connect()
			defer func() { d.close() }()
			d.must(d.tq, "FLUSHALL")
			d.must(d.rd, "FLUSHALL")
			for d.i = range commands {
				args := d.command()
				if d.txnLeft == 0 && d.rnd.IntN(20) == 0 {
					d.begin(1 + d.rnd.IntN(5))
				}
				if strings.EqualFold(args[0], "SCAN") {
					d.exec() // a walk is round trips of its own
				}
				if d.rnd.IntN(25) == 0 || strings.EqualFold(args[0], "SCAN") || len(d.batch) >= d.pipe {
					d.flush()
				}
				if d.rnd.IntN(25) == 0 {
					// A new connection starts on an event loop again
					// (wire/resp.md, How connections are served).
					d.close()
					d.connect()
				}
				if strings.EqualFold(args[0], "SCAN") {
					d.scan(args)
					continue
				}
				d.step(args)
				if d.txnLeft > 0 {
					if d.txnLeft--; d.txnLeft == 0 {
						d.exec()
					}
				}
			}
			d.exec()
			d.flush()
			t.Logf("%d commands; %d transactions of %d commands for TQ (reconciling ones too)", commands, d.txns, d.inTxns)
		})
	}
}

type differ struct {
	t              *testing.T
	seed           uint64
	i              int
	rnd            *rand.Rand
	tqAddr, rdAddr string
	tq, rd         *rawConn
	// batch holds what is to be sent to TQ in one pipeline of up to
	// pipe commands, with the replies redis-server's state calls for.
	batch []tqCommand
	pipe  int
	// txn holds the commands of a MULTI being built (begin), sent in
	// batch as MULTI, the commands, EXEC once txnLeft more are made.
	txn     []tqCommand
	txnLeft int
	inTxn   bool
	txns    int // transactions sent
	inTxns  int // commands in them
}

// tqCommand is a command for TQ with the reply it should get.
type tqCommand struct {
	i         int // the command's index in the seed's sequence
	args      []string
	want      string
	reconcile bool // sent to TQ only, to undo a documented difference
	// exec, for an EXEC, is the transaction's commands (not nil): the
	// reply's elements are theirs, each compared with its want.
	exec []tqCommand
}

// begin starts a transaction of the next n commands (and what reconciles
// them, which TQ runs inside it too).
func (d *differ) begin(n int) { d.inTxn, d.txnLeft = true, n }

// exec ends the transaction being built, if any: MULTI, its commands
// (each answered QUEUED) and EXEC go to the batch.
func (d *differ) exec() {
	if !d.inTxn {
		return
	}
	txn := d.txn
	d.txn, d.inTxn, d.txnLeft = nil, false, 0
	d.txns++
	d.batch = append(d.batch, tqCommand{i: d.i, args: []string{"MULTI"}, want: "+OK\r\n"})
	d.inTxns += len(txn)
	for _, c := range txn {
		q := c
		q.want = "+QUEUED\r\n"
		d.batch = append(d.batch, q)
	}
	d.batch = append(d.batch, tqCommand{i: d.i, args: []string{"EXEC"}, exec: append([]tqCommand{}, txn...)})
}

// queue adds c to the transaction being built, or to the batch.
func (d *differ) queue(c tqCommand) {
	if d.inTxn {
		d.txn = append(d.txn, c)
		return
	}
	d.batch = append(d.batch, c)
}

func (d *differ) connect() {
	var err error
	d.tq, err = dialRaw(d.tqAddr)
	require.NoError(d.t, err)
	d.rd, err = dialRaw(d.rdAddr)
	require.NoError(d.t, err)
	d.pipe = 1 + d.rnd.IntN(8)
}

// flush sends the batch to TQ, every command before reading a reply
// (as redis-py's pipeline does), and compares the replies.
func (d *differ) flush() {
	if len(d.batch) == 0 {
		return
	}
	batch := d.batch
	d.batch = nil
	var b bytes.Buffer
	for _, c := range batch {
		fmt.Fprintf(&b, "*%d\r\n", len(c.args))
		for _, a := range c.args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	d.tq.SetDeadline(time.Now().Add(10 * time.Second)) // a safety limit only
	written := make(chan error, 1)
	go func() {
		_, err := d.tq.Write(b.Bytes())
		written <- err
	}()
	for _, c := range batch {
		var out strings.Builder
		err := d.tq.reply(&out)
		require.NoError(d.t, err, "seed %d, command %d: %s", d.seed, c.i, showArgs(c.args))
		if c.exec == nil {
			d.compare(c, out.String(), fmt.Sprintf("in a pipeline of %d", len(batch)))
			continue
		}
		elems, ok := arrayElems(out.String())
		if !ok || len(elems) != len(c.exec) {
			d.t.Fatalf("seed %d, command %d: EXEC of %d commands answers %s", d.seed, c.i, len(c.exec), clipReply(out.String()))
		}
		for k, e := range c.exec {
			d.compare(e, elems[k], fmt.Sprintf("reply %d of %d of an EXEC", k+1, len(c.exec)))
		}
	}
	require.NoError(d.t, <-written)
}

// compare checks TQ's reply got to c, normalized as wire/resp.md says.
func (d *differ) compare(c tqCommand, got, where string) {
	switch strings.ToUpper(c.args[0]) {
	case "HGETALL":
		got = sortedPairs(got)
	case "HKEYS", "KEYS":
		got = sortedArray(got)
	}
	if os.Getenv("TQ_DIFF_DEBUG") != "" {
		d.t.Logf("%d %s -> %s", c.i, showArgs(c.args), clipReply(got))
	}
	if got != c.want {
		what := "TQ answers %s, redis-server %s"
		if c.reconcile {
			what = "reconciling: TQ answers %s, want %s"
		}
		d.t.Fatalf("seed %d, command %d (%s): %s: "+what, d.seed, c.i, where, showArgs(c.args), clipReply(got), clipReply(c.want))
	}
}

// arrayElems splits an array reply into its elements' replies.
func arrayElems(r string) ([]string, bool) {
	end := strings.Index(r, "\r\n")
	if end < 1 || r[0] != '*' {
		return nil, false
	}
	n, err := strconv.Atoi(r[1:end])
	if err != nil || n < 0 {
		return nil, false
	}
	rest := r[end+2:]
	out := make([]string, 0, n)
	for range n {
		_, after := decodeAt(rest)
		out = append(out, rest[:len(rest)-len(after)])
		rest = after
	}
	return out, rest == ""
}

// scan runs a SCAN walk (its own round trips) on both servers.
func (d *differ) scan(args []string) {
	if want, got := d.walk(d.rd, args), d.walk(d.tq, args); got != want {
		d.t.Fatalf("seed %d, command %d: a walk of %s: TQ lists %s, redis-server %s", d.seed, d.i, showArgs(args), clipReply(got), clipReply(want))
	}
}

func (d *differ) close() {
	d.exec()
	d.flush()
	d.tq.Close()
	d.rd.Close()
}

var (
	diffKeys   = []string{"s1", "s2", "h1", "h2", "k é", "{x"}
	diffFields = []string{"f1", "f2", "f3", "fé"}
	diffGlobs  = []string{"*", "h*", "?1", "[sh]2", "*é*", "{*", "[^h]*", "nomatch"}
)

func (d *differ) key() string   { return diffKeys[d.rnd.IntN(len(diffKeys))] }
func (d *differ) field() string { return diffFields[d.rnd.IntN(len(diffFields))] }

func (d *differ) value() string {
	switch d.rnd.IntN(12) {
	case 0:
		return ""
	case 1:
		return "0"
	case 2:
		return "-1"
	case 3:
		return "\x00\xff\r\n$-1\r\n\x80"
	case 4:
		return d.bytes(1000 + d.rnd.IntN(1000))
	case 5:
		if d.rnd.IntN(4) == 0 {
			return d.bytes(70 << 10) // past what an event loop sends
		}
		return d.bytes(10)
	default:
		return fmt.Sprint("v", d.rnd.IntN(100))
	}
}

func (d *differ) bytes(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(d.rnd.UintN(256))
	}
	return string(b)
}

// keysN is 1 to n keys, a key possibly twice.
func (d *differ) keysN(n int) []string {
	out := make([]string, 1+d.rnd.IntN(n))
	for i := range out {
		out[i] = d.key()
	}
	return out
}

func (d *differ) fieldsN(n int) []string {
	out := make([]string, 1+d.rnd.IntN(n))
	for i := range out {
		out[i] = d.field()
	}
	return out
}

// command is a random command, its name in any case.
func (d *differ) command() []string {
	args := d.pick()
	switch d.rnd.IntN(4) {
	case 0:
		args[0] = strings.ToLower(args[0])
	case 1:
		args[0] = strings.ToLower(args[0][:1]) + args[0][1:]
	}
	return args
}

func (d *differ) pick() []string {
	switch d.rnd.IntN(22) {
	case 0, 1:
		return []string{"SET", d.key(), d.value()}
	case 2, 3:
		return []string{"GET", d.key()}
	case 4:
		c := []string{"MSET"}
		for range 1 + d.rnd.IntN(3) {
			c = append(c, d.key(), d.value())
		}
		return c
	case 5:
		return append([]string{"MGET"}, d.keysN(4)...)
	case 6:
		return append([]string{[]string{"DEL", "UNLINK"}[d.rnd.IntN(2)]}, d.keysN(3)...)
	case 7:
		return append([]string{"EXISTS"}, d.keysN(3)...)
	case 8:
		return []string{"TYPE", d.key()}
	case 9, 10, 11:
		c := []string{[]string{"HSET", "HSET", "HMSET"}[d.rnd.IntN(3)], d.key()}
		for range 1 + d.rnd.IntN(3) {
			c = append(c, d.field(), d.value())
		}
		return c
	case 12, 13:
		return []string{"HGET", d.key(), d.field()}
	case 14:
		return append([]string{"HMGET", d.key()}, d.fieldsN(4)...)
	case 15:
		return []string{"HGETALL", d.key()}
	case 16:
		return append([]string{"HDEL", d.key()}, d.fieldsN(3)...)
	case 17:
		return []string{[]string{"HKEYS", "HLEN"}[d.rnd.IntN(2)], d.key()}
	case 18:
		return []string{"HEXISTS", d.key(), d.field()}
	case 19:
		return []string{"KEYS", diffGlobs[d.rnd.IntN(len(diffGlobs))]}
	case 20:
		c := []string{"SCAN"}
		if d.rnd.IntN(2) == 0 {
			c = append(c, "MATCH", diffGlobs[d.rnd.IntN(len(diffGlobs))])
		}
		if d.rnd.IntN(2) == 0 {
			c = append(c, "COUNT", fmt.Sprint(1+d.rnd.IntN(5)))
		}
		if d.rnd.IntN(3) == 0 {
			c = append(c, "TYPE", []string{"string", "hash"}[d.rnd.IntN(2)])
		}
		return c
	default:
		switch d.rnd.IntN(10) {
		case 0:
			return []string{"FLUSHDB"}
		case 1, 2:
			// Redis's database n, TQ's partition n; 0 is the first
			// either way (wire/resp.md, Partitions).
			return []string{"SELECT", fmt.Sprint(d.rnd.IntN(3))}
		}
		return []string{"DBSIZE"}
	}
}

// do sends args on c, failing the test on a connection error.
func (d *differ) do(c *rawConn, args ...string) string {
	reply, err := c.do(args...)
	require.NoError(d.t, err, "seed %d, command %d: %s", d.seed, d.i, showArgs(args))
	return reply
}

// must sends args on c and checks that it answers OK.
func (d *differ) must(c *rawConn, args ...string) {
	if got := d.do(c, args...); got != "+OK\r\n" {
		d.t.Fatalf("seed %d: %s answers %s", d.seed, showArgs(args), clipReply(got))
	}
}

// expect queues a command for TQ alone, with the reply it should get.
func (d *differ) expect(want string, args ...string) {
	d.queue(tqCommand{i: d.i, args: args, want: want, reconcile: true})
}

// view is a key as TQ holds it, read from redis-server: a string is the
// field value, a hash its fields; nil when absent.
func (d *differ) view(key string) (typ string, fields map[string]string) {
	typ = strings.TrimSuffix(strings.TrimPrefix(d.do(d.rd, "TYPE", key), "+"), "\r\n")
	switch typ {
	case "none":
		return typ, nil
	case "string":
		v, ok := decode(d.do(d.rd, "GET", key)).(string)
		require.True(d.t, ok)
		return typ, map[string]string{"value": v}
	case "hash":
		a := decode(d.do(d.rd, "HGETALL", key)).([]any)
		fields = map[string]string{}
		for i := 0; i < len(a); i += 2 {
			fields[a[i].(string)] = a[i+1].(string)
		}
		return typ, fields
	}
	d.t.Fatalf("seed %d, command %d: redis-server's TYPE %q answers %q", d.seed, d.i, key, typ)
	return "", nil
}

// step sends one command to redis-server, and queues it for TQ with
// the reply TQ should get, and after it what undoes the differences
// wire/resp.md documents.
func (d *differ) step(args []string) {
	name := strings.ToUpper(args[0])
	var before map[string]string // the key's type before, for SET, MSET, HDEL
	switch name {
	case "SET", "HDEL":
		before = map[string]string{}
		before[args[1]], _ = d.view(args[1])
	case "MSET":
		before = map[string]string{}
		for i := 1; i < len(args); i += 2 {
			before[args[i]], _ = d.view(args[i])
		}
	}
	var hashFields map[string][]string // a hash key's fields before a SET or MSET of it
	for k, typ := range before {
		if typ == "hash" && name != "HDEL" {
			_, fs := d.view(k)
			if hashFields == nil {
				hashFields = map[string][]string{}
			}
			hashFields[k] = slices.Sorted(maps.Keys(fs))
		}
	}
	want := d.do(d.rd, args...)
	undoHSet := false
	if strings.HasPrefix(want, "-WRONGTYPE") {
		// A string is a hash with the field value (wire/resp.md, The
		// data model, Fields): TQ answers the command over that.
		_, fields := d.view(args[1])
		want = asTQ(name, args, fields)
		undoHSet = name == "HSET" || name == "HMSET"
	}
	switch name {
	case "HGETALL":
		want = sortedPairs(want)
	case "HKEYS", "KEYS":
		want = sortedArray(want)
	}
	d.queue(tqCommand{i: d.i, args: args, want: want})
	// The differences wire/resp.md documents, undone on TQ.
	for _, k := range slices.Sorted(maps.Keys(hashFields)) {
		// SET leaves a hash's other fields (Commands, SET).
		fs := hashFields[k]
		d.expect(":"+strconv.Itoa(len(fs))+"\r\n", append([]string{"HDEL", k}, fs...)...)
	}
	if name == "HDEL" && before[args[1]] == "hash" {
		if typ, _ := d.view(args[1]); typ == "none" {
			// The key stays with no field left (Commands, HDEL).
			d.expect(":1\r\n", "DEL", args[1])
		}
	}
	if undoHSet {
		d.undoHSet(args)
	}
}

// undoHSet drops from TQ the fields an HSET or HMSET of a string key
// wrote, which Redis refused with WRONGTYPE.
func (d *differ) undoHSet(args []string) {
	fs := map[string]bool{}
	for i := 2; i < len(args); i += 2 {
		fs[args[i]] = true
	}
	d.expect(":"+strconv.Itoa(len(fs))+"\r\n", append([]string{"HDEL", args[1]}, slices.Sorted(maps.Keys(fs))...)...)
}

// asTQ is the reply TQ gives to args (a command Redis refused with
// WRONGTYPE) over a key holding fields.
func asTQ(name string, args []string, fields map[string]string) string {
	bulk := func(f string) string {
		v, ok := fields[f]
		if !ok {
			return "$-1\r\n"
		}
		return fmt.Sprintf("$%d\r\n%s\r\n", len(v), v)
	}
	num := func(n int) string { return ":" + strconv.Itoa(n) + "\r\n" }
	switch name {
	case "GET":
		return bulk("value")
	case "HGET":
		return bulk(args[2])
	case "HMGET":
		out := fmt.Sprintf("*%d\r\n", len(args)-2)
		for _, f := range args[2:] {
			out += bulk(f)
		}
		return out
	case "HGETALL", "HKEYS":
		names := slices.Sorted(maps.Keys(fields))
		out := ""
		for _, f := range names {
			out += bulk2(f)
			if name == "HGETALL" {
				out += bulk(f)
			}
		}
		if name == "HGETALL" {
			return fmt.Sprintf("*%d\r\n", 2*len(names)) + out
		}
		return fmt.Sprintf("*%d\r\n", len(names)) + out
	case "HLEN":
		return num(len(fields))
	case "HEXISTS":
		_, ok := fields[args[2]]
		return num(btoi(ok))
	case "HDEL":
		n := 0
		seen := map[string]bool{}
		for _, f := range args[2:] {
			if _, ok := fields[f]; ok && !seen[f] {
				n++
			}
			seen[f] = true
		}
		return num(n)
	case "HSET":
		n := 0
		seen := map[string]bool{}
		for i := 2; i < len(args); i += 2 {
			if _, ok := fields[args[i]]; !ok && !seen[args[i]] {
				n++
			}
			seen[args[i]] = true
		}
		return num(n)
	case "HMSET":
		return "+OK\r\n"
	}
	return "(no TQ reply known for " + name + ")"
}

func bulk2(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

// walk runs SCAN with args' options from cursor 0 to the end on c and
// answers the keys it listed, sorted with repeats dropped, as an array.
func (d *differ) walk(c *rawConn, args []string) string {
	var keys []string
	cursor := "0"
	for range 1000 {
		r := d.do(c, append([]string{"SCAN", cursor}, args[1:]...)...)
		a, ok := decode(r).([]any)
		if !ok || len(a) != 2 {
			return r
		}
		for _, k := range a[1].([]any) {
			keys = append(keys, k.(string))
		}
		if cursor = a[0].(string); cursor == "0" {
			keys = slices.Compact(slices.Sorted(slices.Values(keys)))
			return encode(toAny(keys))
		}
	}
	d.t.Fatalf("seed %d, command %d: %s does not end in 1000 calls", d.seed, d.i, showArgs(args))
	return ""
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// sortedArray is an array reply of bulk strings sorted; any other reply
// as it is.
func sortedArray(r string) string {
	a, ok := decode(r).([]any)
	if !ok {
		return r
	}
	slices.SortFunc(a, func(x, y any) int { return strings.Compare(x.(string), y.(string)) })
	return encode(a)
}

// sortedPairs is an array reply of field/value pairs sorted by field.
func sortedPairs(r string) string {
	a, ok := decode(r).([]any)
	if !ok || len(a)%2 != 0 {
		return r
	}
	pairs := make([][2]any, len(a)/2)
	for i := range pairs {
		pairs[i] = [2]any{a[2*i], a[2*i+1]}
	}
	slices.SortFunc(pairs, func(x, y [2]any) int { return strings.Compare(x[0].(string), y[0].(string)) })
	for i, p := range pairs {
		a[2*i], a[2*i+1] = p[0], p[1]
	}
	return encode(a)
}

// decode reads one whole RESP2 reply: a bulk string as a string, nil for
// a null, an array as []any; simple strings, errors and integers as
// their line (a rawStatus).
func decode(r string) any {
	v, _ := decodeAt(r)
	return v
}

type rawStatus string

func decodeAt(r string) (any, string) {
	end := strings.Index(r, "\r\n")
	line, rest := r[:end], r[end+2:]
	switch line[0] {
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return nil, rest
		}
		return rest[:n], rest[n+2:]
	case '*':
		n, _ := strconv.Atoi(line[1:])
		a := make([]any, 0, max(n, 0))
		for range n {
			var v any
			v, rest = decodeAt(rest)
			a = append(a, v)
		}
		return a, rest
	}
	return rawStatus(line), rest
}

func encode(v any) string {
	switch v := v.(type) {
	case nil:
		return "$-1\r\n"
	case string:
		return bulk2(v)
	case []any:
		out := fmt.Sprintf("*%d\r\n", len(v))
		for _, e := range v {
			out += encode(e)
		}
		return out
	case rawStatus:
		return string(v) + "\r\n"
	}
	panic(fmt.Sprintf("encode %T", v))
}

// showArgs quotes a command, long arguments by their length.
func showArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if len(a) > 40 {
			out[i] = fmt.Sprintf("%q…(%d bytes)", a[:40], len(a))
		} else {
			out[i] = strconv.Quote(a)
		}
	}
	return strings.Join(out, " ")
}

func clipReply(r string) string {
	if len(r) > 300 {
		return fmt.Sprintf("%q…(%d bytes)", r[:300], len(r))
	}
	return strconv.Quote(r)
}
