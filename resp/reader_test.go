package resp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
