package resp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// manySmallArgs encodes a command of n arguments of size bytes each.
func manySmallArgs(name string, n, size int) []byte {
	var in bytes.Buffer
	fmt.Fprintf(&in, "*%d\r\n$%d\r\n%s\r\n", n+1, len(name), name)
	arg := bytes.Repeat([]byte("a"), size)
	for range n {
		fmt.Fprintf(&in, "$%d\r\n%s\r\n", len(arg), arg)
	}
	return in.Bytes()
}

// TestManySmallArgumentsAreCharged checks that a command of many
// arguments of at most 64 KiB is charged to the budget for large values
// past its first MiB, and that the buffer that held them is not kept
// after it: before, one command of 1M arguments of 64 KiB could allocate
// 64 GiB, uncharged, and keep it for the connection's life.
func TestManySmallArgumentsAreCharged(t *testing.T) {
	in := bytes.NewBuffer(manySmallArgs("NOPE", 1000, 64<<10))
	in.WriteString(cmdline("PING"))
	r := newReader(in, DefaultMaxValue)
	r.authed = true
	var charged int64
	r.large = func(n int64) error { charged += n; return nil }
	args, err := r.next()
	require.NoError(t, err)
	require.Len(t, args, 1001)
	assert.GreaterOrEqual(t, charged, int64(1000*64<<10)-arenaFree, "bytes charged to the budget")
	r.done()
	_, err = r.next()
	require.NoError(t, err)
	assert.LessOrEqual(t, cap(r.arena), arenaFree, "arena kept after the command")
}

// TestManySmallArgumentsOverTheBudget checks that a command whose small
// arguments exceed the whole budget for large values is refused with an
// error naming the budget.
func TestManySmallArgumentsOverTheBudget(t *testing.T) {
	e := newEndpoint(t, Config{MaxValue: 1 << 20, LargeInFlight: 4 << 20, Loops: -1})
	nc, rr := e.raw(t)
	// The server may refuse (and close) before all is sent: the reply
	// is read either way.
	nc.Write(manySmallArgs("MSET", 200, 64<<10))
	line := rr.line(t)
	assert.True(t, strings.HasPrefix(line, "-ERR Protocol error:") && strings.Contains(line, "budget of 4194304 bytes"), "got %q", line)
}

// TestManyEmptyArgumentsAreCharged checks that a command of many
// arguments charges the slices that hold them to the budget for large
// values, as it charges their bytes: before, a command of a million
// empty arguments (6 MB on the wire) held 24 MB of slices charged to
// nothing, and so did each of 10,000 connections sending one.
func TestManyEmptyArgumentsAreCharged(t *testing.T) {
	const n = 500000
	r := newReader(bytes.NewReader(manySmallArgs("NOPE", n, 0)), DefaultMaxValue)
	r.authed = true
	var charged int64
	r.large = func(size int64) error { charged += size; return nil }
	args, err := r.next()
	require.NoError(t, err)
	require.Len(t, args, n+1)
	assert.GreaterOrEqual(t, charged, int64(n*24), "bytes charged to the budget")
	r.done()
	assert.LessOrEqual(t, cap(r.args), argsFree, "argument slices kept after the command")
}

// errWaited is what stalled returns once its parts are read: the reader
// waited for bytes the client has not sent.
var errWaited = errors.New("the reader waited for more")

// stalled gives its parts one read each, then errWaited, as a client
// that sent them and then nothing.
type stalled struct{ parts [][]byte }

func (s *stalled) Read(p []byte) (int, error) {
	if len(s.parts) == 0 {
		return 0, errWaited
	}
	n := copy(p, s.parts[0])
	if s.parts[0] = s.parts[0][n:]; len(s.parts[0]) == 0 {
		s.parts = s.parts[1:]
	}
	return n, nil
}

// TestLineOverTheLimitRefusedBeforeItsLF checks that a line one byte
// past its limit, its LF not sent, is refused as soon as those bytes
// arrive, as Redis refuses "too big inline request": before, the reader
// waited for its 16 KiB buffer to fill, so 64 KiB + 1 bytes of an inline
// command (or 34 digits of a length) drew no answer until the command
// timed out. A line at its limit still waits for its CRLF.
func TestLineOverTheLimitRefusedBeforeItsLF(t *testing.T) {
	for _, tc := range []struct {
		name   string
		authed bool
		in     string
		err    string
	}{
		{"inline", true, strings.Repeat("a", maxInline+1), "line longer than 65536 bytes"},
		{"inline before AUTH", false, strings.Repeat("a", maxUnauthBulk+unauthInlineRoom+1), "line longer than 4128 bytes"},
		{"count", true, "*" + strings.Repeat("1", 34), "line longer than 32 bytes"},
		{"size", true, "*1\r\n$" + strings.Repeat("1", 34), "line longer than 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReader(&stalled{parts: [][]byte{[]byte(tc.in)}}, DefaultMaxValue)
			r.authed = tc.authed
			_, err := r.next()
			var perr *errProtocol
			require.ErrorAs(t, err, &perr)
			assert.Equal(t, "Protocol error: "+tc.err, perr.Error())
		})
	}
	t.Run("at the limit", func(t *testing.T) {
		line := "ECHO " + strings.Repeat("a", maxInline-5)
		// Sent in pieces, the CR with the line and the LF after: the
		// reader waits for the LF and takes the line.
		r := newReader(&stalled{parts: [][]byte{[]byte(line[:40000]), []byte(line[40000:] + "\r"), []byte("\n")}}, DefaultMaxValue)
		r.authed = true
		args, err := r.next()
		require.NoError(t, err)
		require.Len(t, args, 2)
		assert.Len(t, args[1], maxInline-5)
		_, err = r.next()
		assert.ErrorIs(t, err, errWaited)
	})
}

// TestLineOverTheLimitOverTheWire is TestLineOverTheLimitRefusedBeforeItsLF
// as a client meets it, on a loop and on a goroutine: 64 KiB + 1 bytes of
// an inline command, and no line end, are answered the error at once, not
// when the command times out (30 s).
func TestLineOverTheLimitOverTheWire(t *testing.T) {
	for _, served := range []struct {
		name string
		cfg  Config
	}{{"loop", Config{}}, {"goroutine", Config{Loops: -1}}} {
		t.Run(served.name, func(t *testing.T) {
			e := newEndpoint(t, served.cfg)
			c, err := dialRaw(e.addr)
			require.NoError(t, err)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second)) // a hang is the failure
			_, err = c.Write(bytes.Repeat([]byte("a"), maxInline+1))
			require.NoError(t, err)
			line, err := c.r.ReadString('\n')
			require.NoError(t, err)
			assert.Equal(t, "-ERR Protocol error: line longer than 65536 bytes\r\n", line)
		})
	}
}

// looped gives in over and over, at most 16 KiB a read, as a client's
// pipeline arrives: commands cut across reads where the reads end.
type looped struct {
	in []byte
	at int
}

func (l *looped) Read(p []byte) (int, error) {
	n := copy(p[:min(len(p), 16<<10)], l.in[l.at:])
	l.at = (l.at + n) % len(l.in)
	return n, nil
}

// BenchmarkReader reads a pipeline of small commands, the reader's hot
// path: every argument's size is a line, and so is each inline command.
func BenchmarkReader(b *testing.B) {
	for _, tc := range []struct {
		name string
		cmd  func(i int) string
	}{
		{"get", func(i int) string { return cmdline("GET", fmt.Sprintf("key:%d", i)) }},
		{"set", func(i int) string { return cmdline("SET", fmt.Sprintf("key:%d", i), strings.Repeat("v", 100)) }},
		{"hset", func(i int) string {
			return cmdline("HSET", fmt.Sprintf("key:%d", i), "a", "1", "b", "2", "c", "3", "d", "4")
		}},
		{"inline", func(i int) string { return fmt.Sprintf("SET key:%d value\r\n", i) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var in strings.Builder
			for i := range 1000 {
				in.WriteString(tc.cmd(i))
			}
			r := newReader(&looped{in: []byte(in.String())}, DefaultMaxValue)
			r.authed = true
			b.SetBytes(int64(in.Len() / 1000))
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				if _, err := r.next(); err != nil {
					b.Fatal(err)
				}
				r.done()
			}
			// The process's CPU time, beside the wall time: on a busy
			// machine it moves less with what else runs there.
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time the process has used, in nanoseconds.
func cpuTime() int64 {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
