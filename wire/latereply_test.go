package wire

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// TestUnsentCallsLeaveNoLateReplyWatch: calls given up while still
// queued, which the peer never sees and so never answers, are not kept
// among the calls whose late answers go to ConnConfig.LateReply. They
// were, for good, and once maxAbandoned of them had piled up, a call
// given up after it went out had its late ACQUIRE answer dropped: the
// lease it opened was never given back.
func TestUnsentCallsLeaveNoLateReplyWatch(t *testing.T) {
	cli, srv := net.Pipe()
	got := make(chan Op, 1)
	c := NewConn(cli, ConnConfig{KeepAlive: -1, WriteTimeout: -1, LateReply: func(op Op, _ []byte) { got <- op }})
	t.Cleanup(func() { srv.Close(); c.Close() })
	readRequest := func() Header {
		hb := make([]byte, HeaderSize)
		_, err := io.ReadFull(srv, hb)
		require.NoError(t, err)
		h, err := DecodeHeader(hb)
		require.NoError(t, err)
		_, err = io.CopyN(io.Discard, srv, int64(h.BodyLen)+int64(h.PayloadLen))
		require.NoError(t, err)
		return h
	}

	// A call whose frame the pipe does not take yet holds the writer.
	first := make(chan error, 1)
	go func() { first <- c.Do(t.Context(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	require.Eventually(t, func() bool { return c.w.writing.Load() }, 5*time.Second, time.Millisecond)

	// More calls than maxAbandoned queue behind it and are given up.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	const queued = maxAbandoned + 1
	for range queued {
		wg.Go(func() {
			c.Do(ctx, OpAcquire, &wirepb.AcquireRequest{}, nil, &wirepb.AcquireReply{}, nil)
		})
	}
	require.Eventually(t, func() bool {
		c.w.mu.Lock()
		defer c.w.mu.Unlock()
		return len(c.w.pending) == queued
	}, 20*time.Second, time.Millisecond, "the calls queued")
	cancel()
	wg.Wait()

	h := readRequest()
	body, _ := proto.Marshal(&wirepb.Ping{})
	_, err := srv.Write(append(Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: h.ID, BodyLen: uint32(len(body))}.Append(nil), body...))
	require.NoError(t, err)
	require.NoError(t, <-first)

	// A call given up after it went out: its late answer is reported.
	gctx, gcancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer gcancel()
	done := make(chan error, 1)
	go func() {
		done <- c.DoGrace(gctx, 20*time.Millisecond, OpAcquire, &wirepb.AcquireRequest{}, nil, &wirepb.AcquireReply{})
	}()
	h = readRequest()
	require.Equal(t, OpAcquire, h.Op)
	require.Equal(t, OpCancel, readRequest().Op)
	require.ErrorIs(t, <-done, context.DeadlineExceeded)
	body, _ = proto.Marshal(&wirepb.AcquireReply{Lease: 77})
	_, err = srv.Write(append(Header{Version: Version, Flags: FlagReply, Op: OpAcquire, ID: h.ID, BodyLen: uint32(len(body))}.Append(nil), body...))
	require.NoError(t, err)
	select {
	case op := <-got:
		require.Equal(t, OpAcquire, op)
	case <-time.After(5 * time.Second):
		c.mu.Lock()
		n := len(c.abandoned)
		c.mu.Unlock()
		t.Fatalf("the late ACQUIRE answer was not reported (%d calls never sent are still watched for answers)", n)
	}
}
