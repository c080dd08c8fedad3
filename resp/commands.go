package resp

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/wire"
)

type command struct {
	fn func(c *conn, args [][]byte)
	// arity as Redis counts it (the name included): n exactly, or at
	// least -n when negative.
	arity int
	// open commands run before AUTH.
	open bool
	// loop commands run on a connection's loop: they never wait, and
	// where one would (SET with its unit full, GET of a cell on another
	// process's unit) or its reply is large, it leaves its reply out and
	// the connection leaves the loop to run it again.
	loop bool
	// sub, for a command with subcommands, holds every subcommand Redis
	// knows, in capitals, with its arity as Redis counts it (command and
	// subcommand included); TQ serves some of them. dispatch answers
	// one that is not there, or given the wrong number of arguments, as
	// Redis does, before NOAUTH.
	sub map[string]int
	// once: its answer says what it changed (a count, a compare's
	// outcome), so sent again after an attempt that may have run it
	// answers otherwise. Such a command is not answered LOADING for a
	// part of the cluster it could not reach (see notNow): clients send a
	// LOADING command again.
	once bool
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"PING":          {fn: (*conn).ping, arity: -1, open: true, loop: true},
		"ECHO":          {fn: (*conn).echo, arity: 2, loop: true},
		"HELLO":         {fn: (*conn).hello, arity: -1, open: true, loop: true},
		"AUTH":          {fn: (*conn).auth, arity: -2, open: true, loop: true},
		"QUIT":          {fn: (*conn).quitCmd, arity: -1, open: true, loop: true},
		"MULTI":         {fn: (*conn).multiCmd, arity: 1},
		"EXEC":          {fn: (*conn).execCmd, arity: 1},
		"DISCARD":       {fn: (*conn).discardCmd, arity: 1},
		"SELECT":        {fn: (*conn).selectCmd, arity: 2, loop: true},
		"COMMAND":       {fn: (*conn).commandCmd, arity: -1, sub: commandSubcommands},
		"CONFIG":        {fn: (*conn).config, arity: -2, loop: true, sub: configSubcommands},
		"INFO":          {fn: (*conn).info, arity: -1},
		"CLIENT":        {fn: (*conn).client, arity: -2, loop: true, sub: clientSubcommands},
		"DBSIZE":        {fn: (*conn).dbsize, arity: 1},
		"FLUSHDB":       {fn: (*conn).flushdb, arity: -1},
		"FLUSHALL":      {fn: (*conn).flushall, arity: -1},
		"SET":           {fn: (*conn).set, arity: -3, loop: true},
		"GET":           {fn: (*conn).get, arity: 2, loop: true},
		"MSET":          {fn: (*conn).mset, arity: -3},
		"MGET":          {fn: (*conn).mget, arity: -2},
		"DEL":           {fn: (*conn).del, arity: -2, once: true},
		"UNLINK":        {fn: (*conn).del, arity: -2, once: true},
		"EXISTS":        {fn: (*conn).exists, arity: -2, loop: true},
		"TYPE":          {fn: (*conn).typeCmd, arity: 2},
		"KEYS":          {fn: (*conn).keys, arity: 2},
		"SCAN":          {fn: (*conn).scan, arity: -2},
		"HSET":          {fn: (*conn).hset, arity: -4, once: true},
		"HMSET":         {fn: (*conn).hmset, arity: -4},
		"HGET":          {fn: (*conn).hget, arity: 3, loop: true},
		"HMGET":         {fn: (*conn).hmget, arity: -3},
		"HGETALL":       {fn: (*conn).hgetall, arity: 2},
		"HDEL":          {fn: (*conn).hdel, arity: -3, once: true},
		"HKEYS":         {fn: (*conn).hkeys, arity: 2},
		"HLEN":          {fn: (*conn).hlen, arity: 2},
		"HEXISTS":       {fn: (*conn).hexists, arity: 3},
		"TQ.PARTITION":  {fn: (*conn).tqPartition, arity: -1},
		"TQ.PARTITIONS": {fn: (*conn).tqPartitions, arity: 1},
		"TQ.TAGS":       {fn: (*conn).tqTags, arity: 2},
		"TQ.TAG":        {fn: (*conn).tqTag, arity: -4},
		"TQ.FIELDS":     {fn: (*conn).tqFields, arity: -1},
		"TQ.TAGDEL":     {fn: (*conn).tqTagDel, arity: -3, once: true},
		"TQ.TAGCAS":     {fn: (*conn).tqTagCAS, arity: -3, once: true},
		"TQ.LIST":       {fn: (*conn).tqList, arity: -1},
		"TQ.CHANGES":    {fn: (*conn).tqChanges, arity: -2},
	}
}

// dispatch runs one command and appends its reply.
func (c *conn) dispatch(args [][]byte) {
	if c.isEvicted() {
		// Evicted past MaxUnauthenticated after its input was read (its
		// loop's poll found it, or its reader holds it): it runs
		// nothing more; it is answered the eviction's error and closed.
		c.writeError(c.s.evictedMsg())
		c.quit = true
		return
	}
	var buf [32]byte
	name := buf[:0]
	if len(args[0]) <= len(buf) {
		for _, ch := range args[0] {
			if 'a' <= ch && ch <= 'z' {
				ch -= 'a' - 'A'
			}
			name = append(name, ch)
		}
	}
	cmd, ok := commands[string(name)]
	refused := true // answered with an error, as Redis refuses it before it queues it
	switch {
	case !ok:
		c.writeError(unknownCommand(args))
	case cmd.arity > 0 && len(args) != cmd.arity, cmd.arity < 0 && len(args) < -cmd.arity:
		// Before NOAUTH, as Redis checks.
		c.refuse(name, fmt.Sprintf("ERR wrong number of arguments for '%s' command", strings.ToLower(string(name))))
	case cmd.sub != nil && !c.subcommand(string(name), args, cmd.sub):
		// Answered.
	case !c.authed && !cmd.open:
		c.refuse(name, "NOAUTH Authentication required.")
	case c.lp != nil && !cmd.loop:
		refused = false
		c.leave = true
	case c.multi && !inTransaction[string(name)]:
		refused = false
		c.queue(args)
	default:
		refused = false
		c.once = cmd.once
		c.run(cmd, args)
	}
	if refused && c.multi {
		c.aborted = true // EXEC answers EXECABORT, as Redis's does
	}
}

// refuse answers msg for a command refused before it runs (name in upper
// case). A refused EXEC discards the transaction, if any, and answers
// EXECABORT naming why, as Redis's execCommandAbort does: a client is
// never left queueing after the EXEC it sent.
func (c *conn) refuse(name []byte, msg string) {
	if string(name) == "EXEC" {
		c.endMulti()
		msg = "EXECABORT Transaction discarded because of: " + strings.TrimPrefix(msg, "ERR ")
	}
	c.writeError(msg)
}

// inTransaction are the commands MULTI does not queue.
var inTransaction = map[string]bool{"EXEC": true, "DISCARD": true, "MULTI": true, "QUIT": true}

// maxQueued bounds the bytes of the commands one MULTI queues (copies,
// held until EXEC).
const maxQueued = 64 << 20

// queuedArg is what a queued argument holds besides its bytes: its slice.
const queuedArg = int(unsafe.Sizeof([]byte(nil)))

// queue keeps a command of a transaction for EXEC (a copy: the reader
// reuses its buffers), answering QUEUED. Each argument counts its slice
// against maxQueued too: a command of a million empty arguments holds
// 24 MB.
func (c *conn) queue(args [][]byte) {
	n := 0
	for _, a := range args {
		n += queuedArg + len(a)
	}
	if c.queuedBytes+n > maxQueued {
		c.aborted = true
		c.writeError(fmt.Sprintf("ERR a MULTI transaction of more than %d bytes; send its commands without MULTI (redis-py: pipeline(transaction=False))", maxQueued))
		return
	}
	cp := make([][]byte, len(args))
	for i, a := range args {
		cp[i] = bytes.Clone(a)
	}
	c.queued = append(c.queued, cp)
	c.queuedBytes += n
	c.writeString("QUEUED")
}

func (c *conn) endMulti() {
	c.multi, c.aborted, c.queued, c.queuedBytes = false, false, nil, 0
}

// multiCmd starts a transaction: commands up to EXEC are queued, then run
// in order. Not atomically: other connections' commands may run between
// them (wire/resp.md); WATCH is not served.
func (c *conn) multiCmd([][]byte) {
	if c.multi {
		// Refused, and the transaction goes on, as in Redis.
		c.writeError("ERR MULTI calls can not be nested")
		return
	}
	c.multi = true
	c.writeOK()
}

func (c *conn) execCmd([][]byte) {
	switch {
	case !c.multi:
		c.writeError("ERR EXEC without MULTI")
		return
	case c.aborted:
		c.endMulti()
		c.writeError("EXECABORT Transaction discarded because of previous errors.")
		return
	}
	queued := c.queued
	c.endMulti()
	c.writeArray(len(queued))
	for _, args := range queued {
		c.dispatch(args)
		if c.werr != nil {
			return
		}
	}
}

func (c *conn) discardCmd([][]byte) {
	if !c.multi {
		c.writeError("ERR DISCARD without MULTI")
		return
	}
	c.endMulti()
	c.writeOK()
}

// run runs a command; a command that panics answers an error and leaves
// the server serving (a bug in one command must not take the process,
// and the data it holds in memory, down with it).
func (c *conn) run(cmd command, args [][]byte) {
	defer func() {
		if v := recover(); v != nil {
			name := strings.ToLower(string(args[0]))
			c.s.cfg.Logger.Error("resp: command panicked", "command", name, "panic", v, "stack", string(debug.Stack()))
			c.writeError(fmt.Sprintf("ERR internal error in '%s': %v", name, v))
		}
	}()
	cmd.fn(c, args)
}

// The subcommands of Redis 7.0 with their arities (COMMAND INFO of
// redis-server 7.0.15), and CLIENT SETINFO of 7.2, which clients send.
var (
	clientSubcommands = map[string]int{
		"CACHING": 3, "GETNAME": 2, "GETREDIR": 2, "HELP": 2, "ID": 2, "INFO": 2,
		"KILL": -3, "LIST": -2, "NO-EVICT": 3, "PAUSE": -3, "REPLY": 3, "SETINFO": 4,
		"SETNAME": 3, "TRACKING": -3, "TRACKINGINFO": 2, "UNBLOCK": -3, "UNPAUSE": 2,
	}
	configSubcommands = map[string]int{
		"GET": -3, "HELP": 2, "RESETSTAT": 2, "REWRITE": 2, "SET": -4,
	}
	commandSubcommands = map[string]int{
		"COUNT": 2, "DOCS": -2, "GETKEYS": -4, "GETKEYSANDFLAGS": -4, "HELP": 2, "INFO": -2, "LIST": -2,
	}
)

// subcommand checks args[1], the subcommand of command name, against sub
// as Redis does: one it does not know is an unknown subcommand, one with
// the wrong number of arguments an arity error naming "command|sub". It
// reports whether the command may run; when not, it has answered.
// COMMAND alone has no subcommand to check.
func (c *conn) subcommand(name string, args [][]byte, sub map[string]int) bool {
	if len(args) < 2 {
		return true
	}
	arity, ok := sub[strings.ToUpper(string(args[1]))]
	switch {
	case !ok:
		c.writeError(fmt.Sprintf("ERR unknown subcommand '%s'. Try %s HELP.", clipRedis(args[1]), name))
		return false
	case arity > 0 && len(args) != arity, arity < 0 && len(args) < -arity:
		c.writeError(fmt.Sprintf("ERR wrong number of arguments for '%s|%s' command", strings.ToLower(name), strings.ToLower(string(args[1]))))
		return false
	}
	return true
}

// clipRedis is b as Redis quotes an argument in an error: its first 128
// bytes.
func clipRedis(b []byte) string {
	return string(b[:min(len(b), 128)])
}

func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// unknownCommand is Redis's error for a command it does not know: the
// name's first 128 bytes, then the arguments, each quoted and cut to
// what is left of 128 bytes, while the list is shorter than that.
func unknownCommand(args [][]byte) string {
	var sb strings.Builder
	for _, a := range args[1:] {
		if sb.Len() >= 128 {
			break
		}
		left := 128 - sb.Len() // before the quote, as Redis counts
		sb.WriteByte('\'')
		sb.Write(a[:min(len(a), left)])
		sb.WriteString("' ")
	}
	return fmt.Sprintf("ERR unknown command '%s', with args beginning with: %s", clipRedis(args[0]), sb.String())
}

// target splits a key into its partition and key within it: "{p}k" is
// key k of partition p; any other key is in the connection's partition.
// A key TQ cannot name (see nameProblem) is answered with an error that
// says why, and ok is false: every command refuses it alike, rather than
// reads answering nil for a key no write could make.
func (c *conn) target(key []byte) (partition, k string, ok bool) {
	partition, k, err := c.split(key)
	if err != nil {
		c.writeErr(err)
		return "", "", false
	}
	return partition, k, true
}

func (c *conn) split(key []byte) (partition, k string, err error) {
	partition = c.partition
	if len(key) > 2 && key[0] == '{' {
		if end := bytes.IndexByte(key, '}'); end > 1 {
			if err := nameProblem("partition id", key[1:end]); err != nil {
				return "", "", fmt.Errorf("key %q: %w", clip(key), err)
			}
			partition = string(key[1:end])
			if err := nameProblem("key", key[end+1:]); err != nil {
				return "", "", fmt.Errorf("key %q (key %q of partition %q): %w", clip(key), clip(key[end+1:]), partition, err)
			}
			return partition, string(key[end+1:]), nil
		}
	}
	if err := nameProblem("key", key); err != nil {
		return "", "", err
	}
	return partition, string(key), nil
}

// listed is how a key of the connection's partition is answered in a
// listing (KEYS, SCAN, TQ.LIST, TQ.CHANGES): as itself, unless it would
// read back as a key of another partition (it starts with "{x}", as a
// key put through the Go API or as "{default}{x}k" may): then with the
// partition in front, which split reads back as this key.
func (c *conn) listed(key string) string {
	if len(key) > 2 && key[0] == '{' && strings.IndexByte(key, '}') > 1 {
		return "{" + c.partition + "}" + key
	}
	return key
}

// nameProblem says why name cannot be a TQ key, field or partition
// (what): TQ names them with non-empty UTF-8 text of at most
// [engine.MaxNameBytes], where Redis takes any bytes. nil when it can.
func nameProblem(what string, name []byte) error {
	switch {
	case len(name) == 0:
		return fmt.Errorf("empty %s; TQ's keys, fields and partitions are non-empty UTF-8 text: %w", what, engine.ErrInvalid)
	case len(name) > engine.MaxNameBytes:
		return fmt.Errorf("%s %q… is %d bytes long; TQ's keys, fields and partitions are at most %d bytes: %w", what, name[:32], len(name), engine.MaxNameBytes, engine.ErrInvalid)
	case !utf8.Valid(name):
		return fmt.Errorf("%s %q is not valid UTF-8; TQ's keys, fields and partitions are non-empty UTF-8 text: %w", what, clip(name), engine.ErrInvalid)
	}
	return nil
}

// CheckPartition reports why name cannot be the partition connections
// start in (Config.Partition, tq serve's --resp-partition): what SELECT
// refuses. NewServer refuses it too; this lets a caller check its flags
// before it starts anything.
func CheckPartition(name string) error { return partitionProblem([]byte(name)) }

// partitionProblem is nameProblem for a partition a connection moves to
// (SELECT, TQ.PARTITION, the starting one): a '}' in it could not be
// written in a key's {partition} form, so its keys that start with '{'
// would be listed under names that reach another partition's keys.
func partitionProblem(name []byte) error {
	if err := nameProblem("partition id", name); err != nil {
		return err
	}
	if bytes.IndexByte(name, '}') >= 0 {
		return fmt.Errorf("partition id %q holds a '}', which a key's {partition} form cannot carry: %w", clip(name), engine.ErrInvalid)
	}
	return nil
}

// fieldNames converts field names, answering an error for one TQ cannot
// name (ok false).
func (c *conn) fieldNames(args [][]byte) (names []string, ok bool) {
	names = make([]string, len(args))
	for i, f := range args {
		if err := nameProblem("field", f); err != nil {
			c.writeErr(err)
			return nil, false
		}
		names[i] = string(f)
	}
	return names, true
}

// sameTarget splits keys that must all be in one partition (a command
// writes or reads one partition at a time).
func (c *conn) sameTarget(keys [][]byte) (string, []string, error) {
	out := make([]string, len(keys))
	var partition string
	for i, k := range keys {
		p, key, err := c.split(k)
		if err != nil {
			return "", nil, err
		}
		if i > 0 && p != partition {
			return "", nil, fmt.Errorf("keys of two partitions (%q, %q) in one command; TQ reads and writes one partition at a time: %w", partition, p, engine.ErrInvalid)
		}
		partition, out[i] = p, key
	}
	return partition, out, nil
}

func (c *conn) ping(args [][]byte) {
	switch len(args) {
	case 1:
		c.writeString("PONG")
	case 2:
		c.writeBulk(args[1])
	default:
		c.writeError("ERR wrong number of arguments for 'ping' command")
	}
}

func (c *conn) echo(args [][]byte) { c.writeBulk(args[1]) }

func (c *conn) quitCmd([][]byte) {
	c.writeOK()
	c.quit = true
}

func (c *conn) auth(args [][]byte) {
	var user, pass []byte
	switch len(args) {
	case 2:
		pass = args[1]
	case 3:
		user, pass = args[1], args[2]
	default:
		c.writeError("ERR syntax error")
		return
	}
	if c.s.cfg.Token == "" && user == nil {
		// As Redis, where the default user has no password: a username
		// makes it an ACL login, which "default" passes with any
		// password and any other name fails.
		c.writeError("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
		return
	}
	if !c.authenticate(user, pass) {
		if !c.quit {
			c.wrongPass()
		}
		return
	}
	c.writeOK()
}

// hello answers HELLO [protover [AUTH user pass] [SETNAME name]]. TQ
// speaks RESP2; asked for 3, it answers NOPROTO, and clients go on in 2.
// As Redis 7.0 does, it acts on each option as it reads it: an AUTH
// before a bad option has authenticated.
func (c *conn) hello(args [][]byte) {
	if len(args) > 1 {
		v, ok := redisInt(args[1])
		if !ok {
			c.writeError("ERR Protocol version is not an integer or out of range")
			return
		}
		if v != 2 {
			c.writeError("NOPROTO unsupported protocol version")
			return
		}
	}
	for i := 2; i < len(args); i++ {
		more := len(args) - 1 - i
		switch opt := string(args[i]); {
		case strings.EqualFold(opt, "AUTH") && more >= 2:
			if !c.authenticate(args[i+1], args[i+2]) {
				if !c.quit {
					c.wrongPass()
				}
				return
			}
			i += 2
		case strings.EqualFold(opt, "SETNAME") && more >= 1:
			if !clientName(args[i+1]) {
				c.writeError(errClientName)
				return
			}
			c.name = string(args[i+1])
			i++
		default:
			c.writeError(fmt.Sprintf("ERR Syntax error in HELLO option '%s'", clipRedis(args[i])))
			return
		}
	}
	if !c.authed {
		c.writeError("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	c.writeArray(14)
	c.writeBulkString("server")
	c.writeBulkString("tq")
	c.writeBulkString("version")
	c.writeBulkString(redisVersion)
	c.writeBulkString("proto")
	c.writeInt(2)
	c.writeBulkString("id")
	c.writeInt(c.id)
	c.writeBulkString("mode")
	c.writeBulkString("standalone")
	c.writeBulkString("role")
	c.writeBulkString("master")
	c.writeBulkString("modules")
	c.writeArray(0)
}

// redisVersion is the Redis version TQ's endpoint answers to: clients
// that look at it find the commands of 7.0 that TQ serves.
const redisVersion = "7.0.0"

// selectCmd chooses the connection's partition: SELECT 0 is the default
// one, any other argument names a partition.
func (c *conn) selectCmd(args [][]byte) {
	p := string(args[1])
	switch p {
	case "0":
		p = c.s.cfg.Partition
	}
	if err := partitionProblem([]byte(p)); err != nil {
		c.writeErr(fmt.Errorf("SELECT: %w", err))
		return
	}
	c.partition = p
	c.writeOK()
}

func (c *conn) commandCmd(args [][]byte) {
	if len(args) > 1 && strings.EqualFold(string(args[1]), "COUNT") {
		c.writeInt(int64(len(commands)))
		return
	}
	// No command table: redis-cli and the client libraries work without.
	c.writeArray(0)
}

// config answers CONFIG GET for the two parameters redis-benchmark asks
// about ("save" and "appendonly": TQ has neither RDB snapshots nor an
// append-only file; its log is tq serve's --fsync) and nothing for
// others; TQ is configured by tq serve's flags.
func (c *conn) config(args [][]byte) {
	if strings.EqualFold(string(args[1]), "GET") {
		// As Redis 7.0: each parameter once if a pattern matches it (a
		// glob, any case), named as the first that does was given,
		// unless that one is a glob.
		var out []string
		for _, p := range [...]struct{ name, value string }{{"save", ""}, {"appendonly", "no"}} {
			for _, a := range args[2:] {
				if globMatch(strings.ToLower(string(a)), p.name) {
					name := p.name
					if !bytes.ContainsAny(a, "[*?") {
						name = string(a)
					}
					out = append(out, name, p.value)
					break
				}
			}
		}
		c.writeStrings(out)
		return
	}
	c.writeError(fmt.Sprintf("ERR CONFIG %s is not supported: TQ is configured by tq serve's flags", clip(args[1])))
}

// info answers INFO [section ...]: the sections asked for (any case),
// every one for none, all, everything or default; a section TQ does not
// have answers nothing, as in Redis.
func (c *conn) info(args [][]byte) {
	want := map[string]bool{}
	for _, a := range args[1:] {
		switch s := strings.ToLower(string(a)); s {
		case "all", "everything", "default":
			want["server"], want["clients"], want["persistence"], want["keyspace"] = true, true, true, true
		default:
			want[s] = true
		}
	}
	all := len(args) == 1
	var sb strings.Builder
	section := func(name string) bool {
		if !all && !want[name] {
			return false
		}
		if sb.Len() > 0 {
			sb.WriteString("\r\n")
		}
		return true
	}
	if section("server") {
		c.s.mu.Lock()
		loops := len(c.s.loops)
		c.s.mu.Unlock()
		fmt.Fprintf(&sb, "# Server\r\nredis_version:%s\r\nredis_mode:standalone\r\nserver_name:tq\r\ntq_event_loops:%d\r\n", redisVersion, loops)
	}
	if section("clients") {
		c.s.mu.Lock()
		n := len(c.s.conns)
		c.s.mu.Unlock()
		fmt.Fprintf(&sb, "# Clients\r\nconnected_clients:%d\r\n", n)
	}
	if section("persistence") {
		ci := c.s.st.ctrl.Info()
		fmt.Fprintf(&sb, "# Persistence\r\ntq_durable:%d\r\ntq_fsync:%s\r\ntq_log_index:%d\r\n", btoi(ci.Durable), ci.Fsync, ci.LogIndex)
	}
	if section("keyspace") {
		sb.WriteString("# Keyspace\r\n")
		parts := c.s.st.ctrl.Partitions()
		for _, p := range parts[:min(len(parts), maxInfoPartitions)] {
			if st, err := c.s.st.ctrl.Stats(p); err == nil {
				fmt.Fprintf(&sb, "%s:keys=%d,rows=%d\r\n", infoName(p), st.Keys, st.Rows)
			}
		}
		if n := len(parts) - maxInfoPartitions; n > 0 {
			fmt.Fprintf(&sb, "tq_partitions_not_listed:%d\r\n", n)
		}
	}
	c.writeBulkString(sb.String())
}

// maxInfoPartitions is how many partitions INFO keyspace lists (the
// first, in name order); a line tq_partitions_not_listed counts the rest.
// A monitor asking INFO every second should not make a controller of
// many partitions look at each.
const maxInfoPartitions = 1024

// infoName writes a partition's name for an INFO line: as it is when
// every byte is printable ASCII other than space, ':', ',', '=', '%' and
// '#', else with those bytes percent-encoded (%3A), so that a parser that
// splits the line at its first ':' and the value at ',' and '=' (redis-py's
// parse_info) reads it back, no name makes a line of its own, and no line
// starts with '#', which both redis-py and go-redis's InfoMap read as a
// section header.
func infoName(p string) string {
	plain := func(b byte) bool { return b > ' ' && b < 0x7f && !strings.ContainsRune(":,=%#", rune(b)) }
	i := 0
	for i < len(p) && plain(p[i]) {
		i++
	}
	if i == len(p) {
		return p
	}
	var sb strings.Builder
	sb.WriteString(p[:i])
	for ; i < len(p); i++ {
		if b := p[i]; plain(b) {
			sb.WriteByte(b)
		} else {
			fmt.Fprintf(&sb, "%%%02X", b)
		}
	}
	return sb.String()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *conn) client(args [][]byte) {
	switch strings.ToUpper(string(args[1])) {
	case "SETNAME":
		if !clientName(args[2]) {
			c.writeError(errClientName)
			return
		}
		c.name = string(args[2])
		c.writeOK()
	case "GETNAME":
		if c.name == "" {
			c.writeNull()
			return
		}
		c.writeBulkString(c.name)
	case "ID":
		c.writeInt(c.id)
	case "SETINFO":
		// As Redis 7.2's clientSetinfoCommand (TQ keeps neither value).
		switch attr := clipRedis(args[2]); {
		case !strings.EqualFold(attr, "lib-name") && !strings.EqualFold(attr, "lib-ver"):
			c.writeError(fmt.Sprintf("ERR Unrecognized option '%s'", attr))
		case !clientName(args[3]):
			c.writeError(fmt.Sprintf("ERR %s cannot contain spaces, newlines or special characters.", attr))
		default:
			c.writeOK()
		}
	case "INFO":
		c.writeBulkString(c.clientInfo())
	default:
		c.writeError(fmt.Sprintf("ERR CLIENT %s is not supported", clip(args[1])))
	}
}

// clientInfo is CLIENT INFO's line, with every field Redis 7.0 gives, so
// that clients that read them as numbers (redis-py's client_info, go-redis's
// ClientInfo) parse it: db is the partition's number where its name is
// one, else 0, and the partition is tq-partition where its name can stand
// between spaces; the counters TQ does not keep are 0.
func (c *conn) clientInfo() string {
	db := 0
	// Only the number's own spelling: "03" and "+3" are partitions of
	// their own, not SELECT 3's.
	if n, err := strconv.Atoi(c.partition); err == nil && n >= 0 && strconv.Itoa(n) == c.partition {
		db = n
	}
	multi := -1
	if c.multi {
		multi = len(c.queued)
	}
	line := fmt.Sprintf("id=%d addr=%s laddr=%s fd=-1 name=%s age=0 idle=0 flags=N db=%d sub=0 psub=0 ssub=0 multi=%d qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=%d rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp=2",
		c.id, c.remote, c.local, c.name, db, multi, c.queuedBytes)
	if plain(c.partition) {
		line += " tq-partition=" + c.partition
	}
	return line + "\n"
}

// plain reports whether s can stand as a CLIENT INFO value: printable
// ASCII with no space and no '='.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == '=' {
			return false
		}
	}
	return s != ""
}

// clientName reports whether name may name a connection: as in Redis,
// printable ASCII with no space (CLIENT INFO lists it between spaces).
func clientName(name []byte) bool {
	for _, ch := range name {
		if ch < '!' || ch > '~' {
			return false
		}
	}
	return true
}

const errClientName = "ERR Client names cannot contain spaces, newlines or special characters."

func (c *conn) dbsize([][]byte) {
	n, err := c.s.st.ctrl.KeyCount(c.partition)
	if err != nil {
		if absent(err) {
			c.writeInt(0)
			return
		}
		c.writeErr(err)
		return
	}
	c.writeInt(int64(n))
}

// flushMode checks FLUSHDB's and FLUSHALL's arguments: nothing, ASYNC or
// SYNC (TQ's clear is one change either way), as Redis takes; anything
// else is a syntax error, and nothing is cleared.
func (c *conn) flushMode(args [][]byte) bool {
	if len(args) == 1 || len(args) == 2 && (strings.EqualFold(string(args[1]), "ASYNC") || strings.EqualFold(string(args[1]), "SYNC")) {
		return true
	}
	c.writeError("ERR syntax error")
	return false
}

func (c *conn) flushdb(args [][]byte) {
	if !c.flushMode(args) {
		return
	}
	if err := c.s.st.cl.Meta().ClearPartition(c.ctx, c.partition); err != nil {
		c.writeErr(err)
		return
	}
	c.writeOK()
}

func (c *conn) flushall(args [][]byte) {
	if !c.flushMode(args) {
		return
	}
	for _, p := range c.s.st.ctrl.Partitions() {
		if err := c.s.st.cl.Meta().ClearPartition(c.ctx, p); err != nil {
			c.writeErr(err)
			return
		}
	}
	c.writeOK()
}

func (c *conn) set(args [][]byte) {
	if len(args) > 3 {
		if !setOptions(args[3:]) {
			c.writeError("ERR syntax error")
			return
		}
		c.writeError(fmt.Sprintf("ERR SET option %s is not supported by TQ (no expiry, no conditional set)", clip(args[3])))
		return
	}
	partition, key, ok := c.target(args[1])
	if !ok {
		return
	}
	if err := c.s.st.set(c.ctx, partition, key, c.s.cfg.Field, args[2], c.lp == nil, c.owing()); err != nil {
		c.writeErr(err)
		return
	}
	c.writeOK()
}

// setOptions reports whether opts are SET options Redis takes together:
// NX or XX, GET, and KEEPTTL or one of EX, PX, EXAT and PXAT with a value
// (not read). Redis answers any other list with a syntax error; TQ
// refuses even these, naming the first.
func setOptions(opts [][]byte) bool {
	var nx, xx, keepTTL bool
	expiry := ""
	for i := 0; i < len(opts); i++ {
		switch o := strings.ToUpper(string(opts[i])); o {
		case "NX", "XX":
			if o == "NX" && xx || o == "XX" && nx {
				return false
			}
			nx, xx = nx || o == "NX", xx || o == "XX"
		case "GET":
		case "KEEPTTL":
			if expiry != "" {
				return false
			}
			keepTTL = true
		case "EX", "PX", "EXAT", "PXAT":
			if keepTTL || expiry != "" && expiry != o || i+1 == len(opts) {
				return false
			}
			expiry = o
			i++
		default:
			return false
		}
	}
	return true
}

func (c *conn) get(args [][]byte) {
	partition, key, ok := c.target(args[1])
	if !ok {
		return
	}
	c.getOne(partition, key, c.s.cfg.Field)
}

func (c *conn) getOne(partition, key, field string) {
	v, release, ok, err := c.s.st.getOne(c.ctx, partition, key, field, c.lp == nil)
	switch {
	case err != nil:
		c.writeErr(err)
	case !ok:
		c.writeNull()
	default:
		c.writeBulk(v)
		release()
	}
}

// writeValue writes field j of a row, or a null when absent.
func (c *conn) writeValue(row [][]byte, j int) {
	if row == nil || row[j] == nil {
		c.writeNull()
		return
	}
	c.writeBulk(row[j])
}

func (c *conn) mset(args [][]byte) {
	if len(args)%2 != 1 {
		c.writeError("ERR wrong number of arguments for 'mset' command")
		return
	}
	n := len(args) / 2
	keys := make([][]byte, n)
	vals := make([][]byte, n)
	for i := range n {
		keys[i], vals[i] = args[1+2*i], args[2+2*i]
	}
	partition, ks, err := c.sameTarget(keys)
	if err != nil {
		c.writeErr(err)
		return
	}
	// The last of a key given twice wins, as in Redis.
	ks, vals = lastWins(ks, vals)
	if err := c.s.st.put(c.ctx, partition, ks, []string{c.s.cfg.Field}, [][][]byte{vals}, nil, c.owing()); err != nil {
		c.writeErr(err)
		return
	}
	c.writeOK()
}

// lastWins drops every key but the last of each key given twice.
func lastWins(keys []string, vals [][]byte) ([]string, [][]byte) {
	if engine.RepeatedKeys(keys) == nil {
		return keys, vals
	}
	last := map[string]int{}
	for i, k := range keys {
		last[k] = i
	}
	var ks []string
	var vs [][]byte
	for i, k := range keys {
		if last[k] == i {
			ks, vs = append(ks, k), append(vs, vals[i])
		}
	}
	return ks, vs
}

func (c *conn) mget(args [][]byte) {
	// Keys of several partitions are read partition by partition.
	type group struct {
		keys []string
		at   []int
	}
	groups := map[string]*group{}
	var order []string
	for i, k := range args[1:] {
		p, key, ok := c.target(k)
		if !ok {
			return
		}
		g := groups[p]
		if g == nil {
			g = &group{}
			groups[p] = g
			order = append(order, p)
		}
		g.keys, g.at = append(g.keys, key), append(g.at, i)
	}
	rows := make([][][]byte, len(args)-1)
	for _, p := range order {
		g := groups[p]
		uniq := slices.Compact(slices.Sorted(slices.Values(g.keys)))
		v, err := c.s.st.get(c.ctx, p, uniq, []string{c.s.cfg.Field})
		if err != nil {
			c.writeErr(err)
			return
		}
		defer v.release()
		for j, k := range g.keys {
			i, _ := slices.BinarySearch(uniq, k)
			rows[g.at[j]] = v.rows[i]
		}
	}
	c.writeArray(len(rows))
	for _, r := range rows {
		c.writeValue(r, 0)
	}
}

func (c *conn) del(args [][]byte) {
	partition, keys, err := c.sameTarget(args[1:])
	if err != nil {
		c.writeErr(err)
		return
	}
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	n, err := c.s.st.del(c.ctx, partition, keys, c.owing())
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeInt(int64(n))
}

func (c *conn) exists(args [][]byte) {
	n := 0
	for _, k := range args[1:] {
		p, key, ok := c.target(k)
		if !ok {
			return
		}
		has, err := c.s.st.exists(c.ctx, p, []string{key}, c.lp == nil)
		if err != nil {
			c.writeErr(err)
			return
		}
		if has[0] {
			n++
		}
	}
	c.writeInt(int64(n))
}

// typeCmd answers "string" for a key holding the default field alone,
// "hash" for one holding other fields (or tags only), "none" when absent.
func (c *conn) typeCmd(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	meta, err := c.s.st.keyMeta(c.ctx, p, key)
	switch {
	case err != nil:
		c.writeErr(err)
	case meta == nil:
		c.writeString("none")
	default:
		c.writeString(c.typeOf(meta))
	}
}

func (c *conn) keys(args [][]byte) {
	glob := newGlobWork(string(args[1]))
	var out []string
	var after uint64
	for {
		page, next, err := c.s.st.ctrl.ScanKeys(c.partition, after, 0)
		if err != nil {
			c.writeErr(err)
			return
		}
		for _, k := range page {
			name := c.listed(k.Key)
			m, err := glob.match(name)
			if err != nil {
				c.writeError("ERR " + err.Error())
				return
			}
			if m {
				out = append(out, name)
			}
		}
		if next == 0 {
			break
		}
		after = next
	}
	if err := c.s.st.ctrl.WaitDurable(c.ctx); err != nil {
		c.writeErr(err)
		return
	}
	c.writeStrings(out)
}

// scan answers SCAN cursor [MATCH pattern] [COUNT n] [TYPE t] over the
// connection's partition: the cursor is the creation sequence of the last
// key returned, so a key present throughout is returned exactly once.
func (c *conn) scan(args [][]byte) {
	after, ok := scanCursor(args[1])
	if !ok {
		c.writeError("ERR invalid cursor")
		return
	}
	pattern, count := "*", 10
	typ, typed := "", false // TYPE "" is a filter too: no key has that type
	for i := 2; i < len(args); i += 2 {
		if i+1 >= len(args) {
			c.writeError("ERR syntax error")
			return
		}
		switch strings.ToUpper(string(args[i])) {
		case "MATCH":
			pattern = string(args[i+1])
		case "COUNT":
			n, ok := redisInt(args[i+1])
			if !ok {
				c.writeError(errNotInteger)
				return
			}
			if n < 1 {
				c.writeError("ERR syntax error")
				return
			}
			count = int(min(n, 65536))
		case "TYPE":
			typ, typed = strings.ToLower(string(args[i+1])), true
		default:
			c.writeError("ERR syntax error")
			return
		}
	}
	if after == math.MaxUint64 {
		// No key is created after it (the controller would look from
		// after+1, which wraps to the start).
		c.writeArray(2)
		c.writeBulkString("0")
		c.writeArray(0)
		return
	}
	page, next, err := c.s.st.ctrl.ScanKeys(c.partition, after, count)
	if err != nil {
		if absent(err) {
			page, next = nil, 0
		} else {
			c.writeErr(err)
			return
		}
	}
	if h := testHookScan.Load(); h != nil {
		(*h)()
	}
	var out []string
	glob := newGlobWork(pattern)
	for _, k := range page {
		name := c.listed(k.Key)
		m, err := glob.match(name)
		if err != nil {
			c.writeError("ERR " + err.Error())
			return
		}
		if !m {
			continue
		}
		if typed {
			meta, err := c.s.st.keyMeta(c.ctx, c.partition, k.Key)
			if err != nil {
				c.writeErr(err) // as TYPE answers it
				return
			}
			// A key absent now was deleted since the page was read: no
			// TYPE matches it, "none" included, as in Redis.
			if meta == nil || c.typeOf(meta) != typ {
				continue
			}
		}
		out = append(out, name)
	}
	if err := c.s.st.ctrl.WaitDurable(c.ctx); err != nil {
		c.writeErr(err)
		return
	}
	c.writeArray(2)
	c.writeBulkString(strconv.FormatUint(next, 10))
	c.writeStrings(out)
}

// testHookScan, if set, runs in SCAN between reading its page of keys
// and looking up their types: tests delete keys there.
var testHookScan atomic.Pointer[func()]

// scanCursor reads a SCAN cursor as Redis does, with C's strtoul: an
// optional sign, then digits, at most 2^64-1; a minus negates modulo
// 2^64, so -1 is the largest cursor, and the empty cursor is 0. ok is
// false for anything else.
func scanCursor(b []byte) (cursor uint64, ok bool) {
	s := string(b)
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
		if s == "" {
			return 0, false
		}
	}
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}

// redisInt reads an integer argument as Redis does (string2ll): an
// optional minus, then digits without a leading zero ("0" alone), within
// int64; no plus, no spaces. ok is false for anything else, which Redis
// answers with errNotInteger.
func redisInt(b []byte) (n int64, ok bool) {
	s := string(b)
	if digits := strings.TrimPrefix(s, "-"); s != "0" && (digits == "" || digits[0] < '1' || digits[0] > '9') {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

const errNotInteger = "ERR value is not an integer or out of range"

// typeOf is the type TYPE answers for a key present with meta.
func (c *conn) typeOf(meta *engine.BatchMeta) string {
	if fs := held(meta); len(fs) == 1 && fs[0] == c.s.cfg.Field {
		return "string"
	}
	return "hash"
}

// fieldPairs splits "field value ..." arguments; a field given twice
// takes its last value.
func fieldPairs(args [][]byte) (names []string, vals [][][]byte, ok bool) {
	if len(args)%2 != 0 {
		return nil, nil, false
	}
	at := map[string]int{}
	for i := 0; i < len(args); i += 2 {
		f := string(args[i])
		if j, dup := at[f]; dup {
			vals[j][0] = args[i+1]
			continue
		}
		at[f] = len(names)
		names = append(names, f)
		vals = append(vals, [][]byte{args[i+1]})
	}
	return names, vals, true
}

// hset answers the number of fields that were new to the key.
func (c *conn) hset(args [][]byte) {
	c.hwrite(args, false)
}

func (c *conn) hmset(args [][]byte) {
	c.hwrite(args, true)
}

// hwrite writes field/value pairs; HMSET answers OK, HSET the number of
// fields new to the key.
func (c *conn) hwrite(args [][]byte, hmset bool) {
	names, vals, good := fieldPairs(args[2:])
	if !good {
		c.writeError(fmt.Sprintf("ERR wrong number of arguments for '%s' command", strings.ToLower(string(args[0]))))
		return
	}
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	for i := 2; i < len(args); i += 2 {
		if err := nameProblem("field", args[i]); err != nil {
			c.writeErr(err)
			return
		}
	}
	if hmset {
		if err := c.s.st.put(c.ctx, p, []string{key}, names, vals, nil, c.owing()); err != nil {
			c.writeErr(err)
			return
		}
		c.writeOK()
		return
	}
	n, err := c.s.st.hset(c.ctx, p, key, names, vals, c.owing())
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeInt(int64(n))
}

func (c *conn) hget(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	if err := nameProblem("field", args[2]); err != nil {
		c.writeErr(err)
		return
	}
	c.getOne(p, key, string(args[2]))
}

func (c *conn) hmget(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	fields, ok := c.fieldNames(args[2:])
	if !ok {
		return
	}
	uniq := slices.Compact(slices.Sorted(slices.Values(fields)))
	v, err := c.s.st.get(c.ctx, p, []string{key}, uniq)
	if err != nil {
		c.writeErr(err)
		return
	}
	defer v.release()
	c.writeArray(len(fields))
	for _, f := range fields {
		j, _ := slices.BinarySearch(uniq, f)
		c.writeValue(v.rows[0], j)
	}
}

func (c *conn) hgetall(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	meta, err := c.s.st.keyMeta(c.ctx, p, key)
	if err != nil {
		c.writeErr(err)
		return
	}
	var fields []string
	if meta != nil {
		fields = held(meta)
	}
	if len(fields) == 0 {
		c.writeArray(0)
		return
	}
	v, err := c.s.st.get(c.ctx, p, []string{key}, fields)
	if err != nil {
		c.writeErr(err)
		return
	}
	defer v.release()
	n := 0
	for j := range fields {
		if v.rows[0] != nil && v.rows[0][j] != nil {
			n++
		}
	}
	c.writeArray(2 * n)
	for j, f := range fields {
		if v.rows[0] != nil && v.rows[0][j] != nil {
			c.writeBulkString(f)
			c.writeBulk(v.rows[0][j])
		}
	}
}

// hdel drops fields from a key, which keeps its other fields and tags,
// and answers how many it held.
func (c *conn) hdel(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	fields, ok := c.fieldNames(args[2:])
	if !ok {
		return
	}
	n, err := c.s.st.clearFields(c.ctx, p, key, slices.Compact(slices.Sorted(slices.Values(fields))), c.owing())
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeInt(int64(n))
}

func (c *conn) hkeys(args [][]byte) {
	c.hfields(args, func(fs []string) { c.writeStrings(fs) })
}

func (c *conn) hlen(args [][]byte) {
	c.hfields(args, func(fs []string) { c.writeInt(int64(len(fs))) })
}

func (c *conn) hexists(args [][]byte) {
	if err := nameProblem("field", args[2]); err != nil {
		c.writeErr(err)
		return
	}
	c.hfields(args, func(fs []string) { c.writeInt(int64(btoi(slices.Contains(fs, string(args[2]))))) })
}

func (c *conn) hfields(args [][]byte, reply func([]string)) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	meta, err := c.s.st.keyMeta(c.ctx, p, key)
	if err != nil {
		c.writeErr(err)
		return
	}
	var fs []string
	if meta != nil {
		fs = held(meta)
	}
	reply(fs)
}

// tqPartition answers the connection's partition, or sets it.
func (c *conn) tqPartition(args [][]byte) {
	switch len(args) {
	case 1:
		c.writeBulkString(c.partition)
	case 2:
		if err := partitionProblem(args[1]); err != nil {
			c.writeErr(err)
			return
		}
		c.partition = string(args[1])
		c.writeOK()
	default:
		c.writeError("ERR wrong number of arguments for 'tq.partition' command")
	}
}

func (c *conn) tqPartitions([][]byte) {
	c.writeStrings(c.s.st.ctrl.Partitions())
}

// tqTags answers a key's tags as field/value pairs: strings as they are,
// other values as JSON.
func (c *conn) tqTags(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	meta, err := c.s.st.cl.MetaByKeys(c.ctx, p, []string{key}, []string{}, false)
	if absent(err) {
		c.writeArray(0)
		return
	}
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeTags(meta.Tags[0])
}

func (c *conn) writeTags(t engine.Tags) {
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range t {
			if !yield(k) {
				return
			}
		}
	})
	c.writeArray(2 * len(names))
	for _, k := range names {
		c.writeBulkString(k)
		c.writeBulkString(tagString(t[k]))
	}
}

func tagString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// tqTag merges name/value pairs into a key's tags, creating the key: the
// values are strings.
func (c *conn) tqTag(args [][]byte) {
	if len(args)%2 != 0 {
		c.writeError("ERR wrong number of arguments for 'tq.tag' command")
		return
	}
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	tags := engine.Tags{}
	for i := 2; i < len(args); i += 2 {
		tags[string(args[i])] = string(args[i+1])
	}
	if err := c.s.st.put(c.ctx, p, []string{key}, nil, nil, []engine.Tags{tags}, nil); err != nil {
		c.writeErr(err)
		return
	}
	c.writeOK()
}

// tqFields answers the fields of the connection's partition (or the one
// named) with their dtype and kind: name, dtype, kind triples.
func (c *conn) tqFields(args [][]byte) {
	p := c.partition
	switch len(args) {
	case 1:
	case 2:
		if err := nameProblem("partition id", args[1]); err != nil {
			c.writeErr(err)
			return
		}
		p = string(args[1])
	default:
		c.writeError("ERR wrong number of arguments for 'tq.fields' command")
		return
	}
	fs, err := c.s.st.ctrl.Fields(p)
	if err != nil && !absent(err) {
		c.writeErr(err)
		return
	}
	c.writeArray(len(fs))
	for _, f := range fs {
		c.writeArray(3)
		c.writeBulkString(f.Name)
		c.writeBulkString(f.DType.String())
		c.writeBulkString(f.Kind.String())
	}
}

// tqTagDel removes tag names from a key and answers how many of them it
// had (0 for a key that does not exist), as HDEL does for fields.
func (c *conn) tqTagDel(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	names := make([]string, len(args)-2)
	for i, a := range args[2:] {
		names[i] = string(a)
	}
	had, err := c.s.st.deleteTags(c.ctx, p, key, names)
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeInt(int64(had))
}

// tqTagCAS answers TQ.TAGCAS key name [OLD v | OLDJSON j | ABSENT]
// [NEW v | NEWJSON j | DELETE]: set the tag to the new value (or delete
// it) only if it now holds the old one (or is absent). OLD and NEW take
// strings, the JSON forms any value; the answer is [1 or 0, the tag's
// value after] (nil when absent; not a string: JSON).
func (c *conn) tqTagCAS(args [][]byte) {
	p, key, ok := c.target(args[1])
	if !ok {
		return
	}
	name := string(args[2])
	var old, nw any
	var haveOld, haveNew bool
	for i := 3; i < len(args); i++ {
		opt := strings.ToUpper(string(args[i]))
		switch opt {
		case "ABSENT", "OLD", "OLDJSON":
			if haveOld {
				c.writeError(fmt.Sprintf("ERR TQ.TAGCAS option '%s': the old value is given already (one of OLD, OLDJSON or ABSENT)", clip(args[i])))
				return
			}
		case "DELETE", "NEW", "NEWJSON":
			if haveNew {
				c.writeError(fmt.Sprintf("ERR TQ.TAGCAS option '%s': the new value is given already (one of NEW, NEWJSON or DELETE)", clip(args[i])))
				return
			}
		default:
			c.writeError(fmt.Sprintf("ERR TQ.TAGCAS option '%s': want OLD, OLDJSON, ABSENT, NEW, NEWJSON or DELETE", clip(args[i])))
			return
		}
		switch opt {
		case "ABSENT":
			old, haveOld = nil, true
			continue
		case "DELETE":
			nw, haveNew = nil, true
			continue
		}
		if i+1 >= len(args) {
			c.writeError(fmt.Sprintf("ERR TQ.TAGCAS %s needs a value", opt))
			return
		}
		i++
		var v any = string(args[i])
		if strings.HasSuffix(opt, "JSON") {
			// Numbers as the wire's tags have them: whole ones that fit
			// as int64 (a nanosecond timestamp stays exact), one value.
			var err error
			if v, err = wire.TagValueFromPB(args[i]); err == nil && len(args[i]) == 0 {
				err = errors.New("empty")
			}
			if err != nil {
				c.writeError(fmt.Sprintf("ERR TQ.TAGCAS %s: %q is not JSON: %v", opt, clip(args[i]), err))
				return
			}
		}
		if strings.HasPrefix(opt, "OLD") {
			old, haveOld = v, true
		} else {
			nw, haveNew = v, true
		}
	}
	if !haveOld || !haveNew {
		c.writeError("ERR TQ.TAGCAS needs the old value (OLD, OLDJSON or ABSENT) and the new one (NEW, NEWJSON or DELETE)")
		return
	}
	swapped, cur, err := c.s.st.kv.CompareAndSetTag(c.ctx, p, key, name, old, nw)
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeArray(2)
	c.writeInt(int64(btoi(swapped)))
	if cur == nil {
		c.writeNull()
	} else {
		c.writeBulkString(tagString(cur))
	}
}

// tagConditions parses TQ.LIST's conditions: EQ name value, IN name n
// v1..vn, EXISTS name, ABSENT name; values are strings.
func tagConditions(args [][]byte) ([]engine.TagCondition, error) {
	var out []engine.TagCondition
	for i := 0; i < len(args); {
		op := strings.ToUpper(string(args[i]))
		need := map[string]int{"EQ": 2, "IN": 2, "EXISTS": 1, "ABSENT": 1}[op]
		if need == 0 {
			return nil, fmt.Errorf("condition '%s': want EQ, IN, EXISTS or ABSENT", clip(args[i]))
		}
		if i+need >= len(args) {
			return nil, fmt.Errorf("%s needs %s", op, map[string]string{
				"EQ": "a tag name and a value", "IN": "a tag name, a count and that many values",
				"EXISTS": "a tag name", "ABSENT": "a tag name"}[op])
		}
		name := string(args[i+1])
		switch op {
		case "EQ":
			out = append(out, kvapi.Eq(name, string(args[i+2])))
		case "IN":
			n, err := strconv.Atoi(string(args[i+2]))
			if err != nil || n < 1 || n > len(args)-(i+3) {
				return nil, fmt.Errorf("IN %s: want a count and that many values", name)
			}
			vs := make([]any, n)
			for j := range n {
				vs[j] = string(args[i+3+j])
			}
			out = append(out, kvapi.In(name, vs...))
			i += n
		case "EXISTS":
			out = append(out, kvapi.Exists(name))
		case "ABSENT":
			out = append(out, kvapi.Absent(name))
		}
		i += need + 1
	}
	return out, nil
}

// tqList answers the keys of the connection's partition whose tags pass
// every condition, each as [key, [tag, value, ...]]: the controller
// filters, so a replay buffer asks for the finished samples only.
func (c *conn) tqList(args [][]byte) {
	where, err := tagConditions(args[1:])
	if err != nil {
		c.writeError("ERR TQ.LIST " + err.Error())
		return
	}
	all, err := c.s.st.kv.ListWhere(c.ctx, c.partition, where...)
	if err != nil {
		c.writeErr(err)
		return
	}
	es := all[c.partition]
	c.writeArray(len(es))
	for _, e := range es {
		c.writeArray(2)
		c.writeBulkString(c.listed(e.Key))
		c.writeTags(e.Tags)
	}
}

// maxChangesWait bounds TQ.CHANGES's TIMEOUT, as the controller bounds a
// blocking fetch. A client that closes its connection ends its wait at
// once (see conn.watchGone); one that went away without a word (its host
// gone) holds its connection's goroutine no longer than this.
const maxChangesWait = 5 * time.Minute

// tqChanges answers TQ.CHANGES cursor [TIMEOUT ms]: the keys of the
// connection's partition changed after cursor ("" or 0: from the
// beginning), waiting up to the timeout (default 0: do not wait) for
// one, as [next cursor, reset, more, [[key, cleared, [tags]] ...]]. The
// cursor is hex, to pass back as it is.
func (c *conn) tqChanges(args [][]byte) {
	var cursor []byte
	if a := string(args[1]); a != "" && a != "0" {
		var err error
		if cursor, err = hex.DecodeString(a); err != nil {
			c.writeError("ERR TQ.CHANGES: the cursor is the hex string a previous call answered")
			return
		}
	}
	wait := time.Duration(0)
	if len(args) > 2 {
		if len(args) != 4 || !strings.EqualFold(string(args[2]), "TIMEOUT") {
			c.writeError("ERR TQ.CHANGES cursor [TIMEOUT ms]")
			return
		}
		ms, err := strconv.ParseUint(string(args[3]), 10, 32)
		if err != nil || ms > uint64(maxChangesWait/time.Millisecond) {
			c.writeError(fmt.Sprintf("ERR TQ.CHANGES TIMEOUT: milliseconds, a whole number up to %d", maxChangesWait/time.Millisecond))
			return
		}
		wait = time.Duration(ms) * time.Millisecond
	}
	cs, err := c.changes(cursor, wait)
	if errors.Is(err, context.DeadlineExceeded) && c.ctx.Err() == nil {
		// Nothing changed in time: the same cursor, nothing listed.
		c.writeArray(4)
		c.writeBulkString(hex.EncodeToString(cursor))
		c.writeInt(0)
		c.writeInt(0)
		c.writeArray(0)
		return
	}
	if err != nil {
		c.writeErr(err)
		return
	}
	c.writeArray(4)
	c.writeBulkString(hex.EncodeToString(cs.Cursor))
	c.writeInt(int64(btoi(cs.Reset)))
	c.writeInt(int64(btoi(cs.More)))
	c.writeArray(len(cs.Changes))
	for _, ch := range cs.Changes {
		c.writeArray(3)
		c.writeBulkString(c.listed(ch.Key))
		c.writeInt(int64(btoi(ch.Cleared)))
		c.writeTags(ch.Tags)
	}
}

// changes asks the controller for the changes after cursor, waiting up to
// wait for one (context.DeadlineExceeded when none came). The timeout
// bounds that wait only: changes found are answered once they are
// durable, which may take longer under other clients' writes (the wait
// for the log is bounded by CommandTimeout).
func (c *conn) changes(cursor []byte, wait time.Duration) (engine.KeyChanges, error) {
	if !embedded.Name(c.partition) {
		// Refused with the partition named.
		_, err := c.s.st.kv.Changes(c.ctx, c.partition, cursor)
		return engine.KeyChanges{}, err
	}
	// A wait of zero still answers what is already there: give the
	// controller a moment to say so. Shutdown ends the wait as its
	// timeout would (see Server.Shutdown).
	// A client that closes its connection meanwhile ends the wait too
	// (see watchGone), and the connection with it.
	ctx, cancel := context.WithTimeout(c.ctx, max(wait, time.Millisecond))
	stop := context.AfterFunc(c.s.drain, cancel)
	var gone atomic.Bool
	unwatch := func() {}
	if wait > 0 {
		unwatch = c.watchGone(func() {
			gone.Store(true)
			cancel()
		})
	}
	cs, err := c.s.st.ctrl.KeyChanges(ctx, engine.ChangesRequest{Partition: c.partition, Cursor: cursor, Wait: true})
	unwatch()
	stop()
	cancel()
	if gone.Load() {
		c.quit = true
	}
	if err != nil {
		if errors.Is(err, context.Canceled) && (c.s.drain.Err() != nil || gone.Load()) && c.ctx.Err() == nil {
			err = context.DeadlineExceeded // nothing changed before the shutdown, or the client left
		}
		return cs, err
	}
	ctx, cancel = context.WithTimeout(c.ctx, c.s.cfg.CommandTimeout)
	defer cancel()
	return cs, c.s.st.ctrl.WaitDurable(ctx)
}
