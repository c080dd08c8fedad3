package main

import (
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A controller that accepts but never answers runs tq stat, checkpoint
// and unit out of their --timeout: the error names the flag and its
// value, not only "context deadline exceeded", which said neither what
// ran out nor what to raise.
func TestClientCommandsNameTheTimeoutThatRanOut(t *testing.T) {
	t.Setenv("TQ_TOKEN", "t")
	t.Setenv("TQ_CONTROLLER", "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	addr := "tcp://" + ln.Addr().String()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stat", "--timeout", "300ms", addr}, "stat: gave up after --timeout 300ms"},
		{[]string{"stat", "--watch", "--json", "--timeout", "300ms", addr}, "stat: gave up after --timeout 300ms"},
		{[]string{"checkpoint", "list", "--timeout", "300ms", addr}, "checkpoint list: gave up after --timeout 300ms"},
		{[]string{"checkpoint", "save", "--timeout", "300ms", addr, "c1"}, "checkpoint save: gave up after --timeout 300ms"},
		{[]string{"unit", "drain", "--controller", addr, "--timeout", "300ms", "1"}, "unit drain: gave up after --timeout 300ms"},
		{[]string{"unit", "undrain", "--controller", addr, "--timeout", "300ms", "1"}, "unit undrain: gave up after --timeout 300ms"},
		{[]string{"unit", "rebalance", "--controller", addr, "--timeout", "300ms"}, "unit rebalance: gave up after --timeout 300ms"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			require.Error(t, err, "%q", tc.args)
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
			assert.Contains(t, err.Error(), "context deadline exceeded", "%q: the cause stays", tc.args)
		})
	}
}
