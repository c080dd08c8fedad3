package wire

// Servers that misbehave toward the client: answering and closing before
// reading a request whole, claiming reply bodies they do not send.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestAnswerBeforeCloseWinsOverFailedWrite: a server that answers a
// large request from its header alone and closes without reading the
// payload fails the client's write (a broken pipe, or a reset on TCP)
// while its answer is still arriving or waiting in the socket. The caller
// gets the answer, not the write's error: a refusal that names its reason
// (an error reply), or a reply with a payload of its own, read whole.
func TestAnswerBeforeCloseWinsOverFailedWrite(t *testing.T) {
	// More than the reader's buffer, less than the socket holds: the
	// server's write completes and it closes while the reader has yet to
	// read most of the payload from the socket. (Over TCP the reset that
	// a close with unread bytes sends may discard what the closing side
	// had not sent yet, so the reply case runs on a unix socket.)
	answer := bytes.Repeat([]byte("answer, "), 16<<10)
	for _, tc := range []struct {
		network string
		refuse  bool
	}{{"tcp", true}, {"unix", true}, {"unix", false}} {
		name := tc.network + "/reply"
		if tc.refuse {
			name = tc.network + "/error"
		}
		t.Run(name, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if tc.network == "unix" {
				addr = filepath.Join(t.TempDir(), "s")
			}
			ln, err := net.Listen(tc.network, addr)
			require.NoError(t, err)
			defer ln.Close()
			served := make(chan error, 1)
			go func() { served <- answerAndClose(ln, tc.refuse, answer) }()
			nc, err := net.Dial(tc.network, ln.Addr().String())
			require.NoError(t, err)
			c := NewConn(nc, ConnConfig{KeepAlive: -1})
			defer c.Close()

			// Far more than the socket buffers hold: the write is still
			// going when the server closes.
			big := make([]byte, 64<<20)
			var got []byte
			start := time.Now()
			err = c.Do(context.Background(), opEcho, &wirepb.Ping{}, net.Buffers{big}, &wirepb.Ping{},
				func(h Header, _ proto.Message) ([][]byte, error) {
					// Read the payload only once the write has failed.
					for c.Err() == nil {
						if time.Since(start) > 5*time.Second {
							return nil, errors.New("the write has not failed in 5 s")
						}
						time.Sleep(time.Millisecond)
					}
					got = make([]byte, h.PayloadLen)
					return [][]byte{got}, nil
				})
			require.NoError(t, <-served)
			if tc.refuse {
				require.True(t, errors.Is(err, engine.ErrInvalid), "want the server's answer, got %v", err)
				require.ErrorContains(t, err, "over this server's 1 MiB")
			} else {
				require.NoError(t, err)
				require.True(t, bytes.Equal(got, answer), "the answer's payload differs")
			}
			require.Less(t, time.Since(start), 5*time.Second)

			// The connection is done: the next call fails at once.
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("connection not failed 5 s after the server closed it")
			}
			err = c.Do(context.Background(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
			require.True(t, errors.Is(err, ErrUnavailable), "got %v", err)
		})
	}
}

// answerAndClose accepts one connection, reads a request's header and
// answers it — an error reply if refuse, else a reply carrying payload —
// and closes without reading the request's body or payload.
func answerAndClose(ln net.Listener, refuse bool, payload []byte) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close() // unread bytes: a reset on TCP
	hb := make([]byte, HeaderSize)
	if _, err := io.ReadFull(nc, hb); err != nil {
		return err
	}
	h, err := DecodeHeader(hb)
	if err != nil {
		return err
	}
	if refuse {
		e := &wirepb.Error{Code: wirepb.Code_CODE_INVALID, Message: "a payload of 64 MiB is over this server's 1 MiB"}
		_, err = nc.Write(frame(h.Op, FlagReply|FlagError, h.ID, e, nil))
	} else {
		_, err = nc.Write(frame(h.Op, FlagReply, h.ID, &wirepb.Ping{}, payload))
	}
	return err
}

// TestClaimedReplyBodyCostsWhatArrives: a server that claims a reply body
// of 64 MiB and sends 1 KiB of it makes the client allocate about what
// came, not what was claimed (the server's reads of request bodies work
// the same way).
func TestClaimedReplyBodyCostsWhatArrives(t *testing.T) {
	srv, done := pipeCall(t)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := srv.Read(make([]byte, 1)) // the request is on its way
	require.NoError(t, err)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	claim := Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: 1, BodyLen: MaxBodyLen}.Append(nil)
	srv.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = srv.Write(append(claim, make([]byte, 1<<10)...)) // returns once the reader took it
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // the reader waits for more
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(4<<20),
		"the client allocated for the claim, not for the bytes that came")

	srv.Close()
	select {
	case err := <-done:
		require.True(t, errors.Is(err, ErrUnavailable), "got %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("a call still waiting 5 s after the server closed")
	}
}

// TestLargeReplyBodyReadWhole: a reply body larger than the reader's
// buffer, read as its bytes arrive in small writes, comes out whole.
func TestLargeReplyBodyReadWhole(t *testing.T) {
	srv, done := pipeCall(t)
	readFrame(t, srv)
	msg := strings.Repeat("a long reason, ", 40<<10) // 600 KiB
	b := frame(opEcho, FlagReply|FlagError, 1, &wirepb.Error{Code: wirepb.Code_CODE_INVALID, Message: msg}, nil)
	go func() {
		for len(b) > 0 { // in pieces of 10,000 bytes: the body grows as they come
			n := min(len(b), 10000)
			if _, err := srv.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
	}()
	select {
	case err := <-done:
		var re *RemoteError
		require.True(t, errors.As(err, &re), "got %v", err)
		require.Equal(t, msg, re.Message)
	case <-time.After(5 * time.Second):
		t.Fatal("no answer in 5 s")
	}
}

// pipeCall starts a call (id 1, no payload either way) on a client
// connection over a pipe, and returns the server's end and the call's
// outcome. Both ends close when the test does.
func pipeCall(t *testing.T) (srv net.Conn, done <-chan error) {
	cli, srv := net.Pipe()
	c := NewConn(cli, ConnConfig{KeepAlive: -1})
	t.Cleanup(func() { srv.Close(); c.Close() })
	out := make(chan error, 1)
	go func() { out <- c.Do(context.Background(), opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil) }()
	return srv, out
}

// TestAnswerBeforeRequestSent: a server that answers a request before the
// client has written it (ids are a counter, easy to guess) while it waits
// in the queue behind a large payload, and sends the answer's payload
// slowly. When the call's context ends meanwhile, Do must not return
// while the reader still fills the caller's buffer (it took the frame out
// of the queue and returned at once), and the answer must not complete
// the call that reuses its request (one the server never answers).
func TestAnswerBeforeRequestSent(t *testing.T) {
	cli, srv := net.Pipe()
	c := NewConn(cli, ConnConfig{KeepAlive: -1})
	t.Cleanup(func() { srv.Close(); c.Close() })

	// Call 1: a payload the server does not read, so the writer stalls.
	go c.Do(context.Background(), opEcho, &wirepb.Ping{}, net.Buffers{make([]byte, 1<<20)}, &wirepb.Ping{}, nil)
	_, err := io.ReadFull(srv, make([]byte, HeaderSize))
	require.NoError(t, err)

	// Call 2, queued behind it, answered at once with half its payload.
	buf := make([]byte, 10)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	done2, done3 := make(chan error, 1), make(chan error, 1)
	go func() {
		done2 <- c.Do(ctx2, opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, func(Header, proto.Message) ([][]byte, error) { return [][]byte{buf}, nil })
		// Call 3 on the same goroutine (the pool may hand it call 2's
		// request): never answered.
		ctx3, cancel3 := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel3()
		done3 <- c.Do(ctx3, opEcho, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
	}()
	time.Sleep(20 * time.Millisecond)
	body, _ := proto.Marshal(&wirepb.Ping{Nonce: 42})
	h := Header{Version: Version, Flags: FlagReply, Op: opEcho, ID: 2, BodyLen: uint32(len(body)), PayloadLen: 10}
	_, err = srv.Write(append(append(h.Append(nil), body...), "HELLO"...))
	require.NoError(t, err)
	select {
	case err := <-done2:
		t.Fatalf("call 2 returned (%v) while the reader was filling its buffer", err)
	case <-time.After(300 * time.Millisecond): // well past its deadline
	}
	_, err = srv.Write([]byte("WORLD"))
	require.NoError(t, err)
	<-done2
	require.Equal(t, "HELLOWORLD", string(buf), "the reader finished before Do returned")
	go io.Copy(io.Discard, srv) // the writer goes on
	select {
	case err := <-done3:
		t.Fatalf("call 3, never answered, returned %v", err)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestLateReplyReported: an answer that comes after its caller gave up
// (DoGrace's grace passed) goes to ConnConfig.LateReply with its op and
// body, so that a hold it opened can be given back; error answers,
// answers to ids never asked and answers to calls still waiting do not.
func TestLateReplyReported(t *testing.T) {
	cli, srv := net.Pipe()
	type late struct {
		op   Op
		body []byte
	}
	got := make(chan late, 4)
	c := NewConn(cli, ConnConfig{KeepAlive: -1, LateReply: func(op Op, body []byte) { got <- late{op, body} }})
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
	answer := func(id uint64, flags Flags, m proto.Message) {
		body, _ := proto.Marshal(m)
		h := Header{Version: Version, Flags: FlagReply | flags, Op: OpAcquire, ID: id, BodyLen: uint32(len(body))}
		_, err := srv.Write(append(h.Append(nil), body...))
		require.NoError(t, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.DoGrace(ctx, 20*time.Millisecond, OpAcquire, &wirepb.AcquireRequest{}, nil, &wirepb.AcquireReply{})
	}()
	h := readRequest()
	if cr := readRequest(); cr.Op != OpCancel { // the cancel the caller sends when it gives up
		t.Fatalf("want a CANCEL, got %v", cr.Op)
	}
	require.ErrorIs(t, <-done, context.DeadlineExceeded)
	answer(h.ID, 0, &wirepb.AcquireReply{Lease: 77})
	select {
	case l := <-got:
		var r wirepb.AcquireReply
		require.NoError(t, proto.Unmarshal(l.body, &r))
		require.Equal(t, OpAcquire, l.op)
		require.Equal(t, uint64(77), r.Lease)
	case <-time.After(5 * time.Second):
		t.Fatal("the late answer was not reported")
	}
	answer(h.ID+100, FlagError, &wirepb.Error{Code: wirepb.Code_CODE_CANCELED})
	answer(h.ID+200, 0, &wirepb.AcquireReply{Lease: 99}) // an id never asked: a hostile peer's
	var r wirepb.AcquireReply
	go func() { done <- c.Do(context.Background(), OpAcquire, &wirepb.AcquireRequest{}, nil, &r, nil) }()
	h = readRequest()
	answer(h.ID, 0, &wirepb.AcquireReply{Lease: 78})
	require.NoError(t, <-done)
	require.Equal(t, uint64(78), r.Lease)
	select {
	case l := <-got:
		t.Fatalf("reported %v, which was an error, to an id never asked, or answered a waiting call", l.op)
	case <-time.After(100 * time.Millisecond):
	}
}
