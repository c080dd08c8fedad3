package client

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// refused decides whether a put frees what it wrote: only when the change
// certainly did not happen.
func TestRefused(t *testing.T) {
	remote := func(code wirepb.Code) error { return &wire.RemoteError{Code: code, Message: "x"} }
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{remote(wirepb.Code_CODE_INVALID), true},
		{remote(wirepb.Code_CODE_NOT_FOUND), true},
		{remote(wirepb.Code_CODE_CLOSED), false},
		{fmt.Errorf("commit: %w", engine.ErrInvalid), true}, // a controller in this process
		{fmt.Errorf("commit: %w", context.Canceled), false},
		{fmt.Errorf("commit: %w", engine.ErrUnavailable), false},
		{fmt.Errorf("commit: %w", engine.ErrClosed), false},
		// A reply that could not be read: the commit may have happened.
		{corruptReply(fmt.Errorf("3 tag maps for 2 keys")), false},
		{fmt.Errorf("decode COMMIT reply: %w", engine.ErrCorrupt), false},
	} {
		assert.Equal(t, tc.want, refused(tc.err), "%v", tc.err)
	}
}
