package resp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientNamesAsRedis checks that CLIENT SETNAME and HELLO's SETNAME
// refuse a name with a space, a newline or another character Redis
// refuses, and keep the name they had.
func TestClientNamesAsRedis(t *testing.T) {
	e := newEndpoint(t, Config{})
	nc, rr := e.raw(t)
	_, err := nc.Write([]byte(cmdline("CLIENT", "SETNAME", "good") + cmdline("CLIENT", "SETNAME", "a b") + cmdline("HELLO", "2", "SETNAME", "a\nb") + cmdline("CLIENT", "GETNAME") + cmdline("CLIENT", "SETNAME", "")))
	require.NoError(t, err)
	assert.Equal(t, "+OK", rr.line(t))
	assert.Equal(t, "-"+errClientName, rr.line(t))
	assert.Equal(t, "-"+errClientName, rr.line(t))
	assert.Equal(t, "good", string(rr.bulk(t)))
	assert.Equal(t, "+OK", rr.line(t))
}

// TestScanFromTheLastCursor checks that SCAN from the largest cursor ends
// the walk, as in Redis, rather than start it again.
func TestScanFromTheLastCursor(t *testing.T) {
	ctx := context.Background()
	e := newEndpoint(t, Config{})
	rc := e.client(t, nil)
	require.NoError(t, rc.Set(ctx, "k", "v", 0).Err())
	keys, next, err := rc.Scan(ctx, 18446744073709551615, "", 10).Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
	assert.Zero(t, next)
}
