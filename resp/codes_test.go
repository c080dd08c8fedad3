package resp

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Every wire code a command may meet (a controller or unit of another
// process refusing it) answers the Redis error wire/resp.md names, with
// TQ's message after it: WRONGTYPE for a dtype mismatch, OOM for a full
// unit and for one that could never hold the write, LOADING for a closed
// one (sent again later, it may pass), ERR for the rest.
func TestEveryCodeAnswersItsRedisError(t *testing.T) {
	want := map[wirepb.Code]string{
		wirepb.Code_CODE_DTYPE_MISMATCH: "WRONGTYPE",
		wirepb.Code_CODE_CAPACITY:       "OOM",
		wirepb.Code_CODE_TOO_LARGE:      "OOM",
		wirepb.Code_CODE_CLOSED:         "LOADING",
	}
	for n, name := range wirepb.Code_name {
		code := wirepb.Code(n)
		if code == wirepb.Code_CODE_UNSPECIFIED {
			continue
		}
		prefix, ok := want[code]
		if !ok {
			prefix = "ERR"
		}
		for _, once := range []bool{false, true} {
			c := &conn{once: once}
			c.writeErr(wire.FromReply(&wirepb.Error{Code: code, Message: "what was wrong"}))
			assert.Equal(t, "-"+prefix+" what was wrong\r\n", string(c.out), "%s (once %v)", name, once)
		}
	}
}

// A SET of a value the unit could never hold, even empty, answers OOM at
// once, naming that, rather than after waiting for room.
func TestSetPastTheUnitsCapacityIsOOM(t *testing.T) {
	e := newEndpointWith(t, Config{}, func(c *embedded.Config) {
		c.Storage.Capacity = 1 << 20
		c.Storage.SegmentSize = 1 << 20
	})
	rc := e.client(t, nil)
	err := rc.Set(context.Background(), "k", strings.Repeat("v", 2<<20), 0).Err()
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "OOM "), "%v", err)
	assert.Contains(t, err.Error(), "could ever hold")
}
