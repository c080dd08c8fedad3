package client_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// A meta whose cell lengths its schema does not give (decoded wrongly,
// made by hand: here 2^63 bytes a cell, whose sum wraps to 0) is refused
// as corrupt, naming the field and row, before anything is sized or read
// by those lengths: GetInto used to slice its buffer with them and panic.
func TestGetHugeCellLenIsAnError(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	meta, err := c.PutNew(ctx, "p", ints(t, "x", []int64{1, 2}))
	if err != nil {
		t.Fatal(err)
	}
	bad := meta.Clone()
	bad.Cells["x"][0].Addr.Len = 1 << 63
	bad.Cells["x"][1].Addr.Len = 1 << 63 // the sum wraps to 0
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("GetInto of a meta with a huge cell length panicked: %v", r)
		}
	}()
	_, err = c.GetInto(ctx, bad, make([]byte, 64))
	require.ErrorIs(t, err, engine.ErrCorrupt, "GetInto")
	require.ErrorContains(t, err, `field "x", row`)
	_, err = c.GetCopy(ctx, bad)
	require.ErrorIs(t, err, engine.ErrCorrupt, "GetCopy")
}

// unitConn serves a storage unit of this process as a remote data
// connection (what a tcp unit looks like to the client).
type unitConn struct{ u client.DataUnit }

func (c unitConn) Write(ctx context.Context, ext [][][]byte) ([]engine.RemoteAddr, error) {
	return c.u.Write(ctx, ext)
}
func (c unitConn) Read(ctx context.Context, r []engine.RemoteAddr, dst [][]byte) error {
	return c.u.ReadInto(ctx, r, dst)
}
func (c unitConn) Free(ctx context.Context, cells []engine.RemoteAddr) error {
	return c.u.Free(ctx, cells)
}
func (unitConn) Close() error { return nil }

// GetCopy over a remote unit, which sizes its buffer from the meta's cell
// lengths, refuses lengths its schema does not give before it allocates
// (2^62 bytes made it panic, or try to).
func TestRemoteGetCopyHugeCellLenIsAnError(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	u := e.Units[0]
	c, err := client.New(embedded.Meta(e.Controller), []client.DataUnit{client.RemoteUnit(u.ID(), "elsewhere", "tcp", unitConn{embedded.Unit(u)})}, client.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	meta, err := c.PutNew(ctx, "p", ints(t, "x", []int64{1, 2}))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetCopy(ctx, meta); err != nil || values(t, got, "x")[1] != 2 {
		t.Fatalf("GetCopy: %v", err)
	}
	bad := meta.Clone()
	bad.Cells["x"][1].Addr.Len = 1 << 62
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("GetCopy of a meta with a huge cell length panicked: %v", r)
		}
	}()
	_, err = c.GetCopy(ctx, bad)
	require.ErrorIs(t, err, engine.ErrCorrupt)
}
