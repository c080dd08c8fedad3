package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// The challenge handshake (spec.md "Handshake"): the token never goes on
// the wire, the client refuses a server that cannot prove it knows the
// token, and a recorded proof does not open another connection.

const authToken = "tok-3f9a1c7e-SECRET-d41d8cd98f00b204"

// rawConn speaks the handshake by hand, the way spec.md describes it,
// without the package's client.
type rawConn struct {
	t  *testing.T
	nc net.Conn
}

func authDial(t *testing.T, addr string) *rawConn {
	t.Helper()
	network, address, err := ParseAddr(addr)
	require.NoError(t, err)
	nc, err := net.Dial(network, address)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t, nc}
}

// hello sends a HELLO request with id and returns its body.
func (r *rawConn) hello(id uint64, h *wirepb.Hello) []byte {
	r.t.Helper()
	body, err := proto.Marshal(h)
	require.NoError(r.t, err)
	r.send(Header{Version: Version, Op: OpHello, ID: id, BodyLen: uint32(len(body))}, body)
	return body
}

func (r *rawConn) send(h Header, body []byte) {
	r.t.Helper()
	_, err := r.nc.Write(append(h.Append(nil), body...))
	require.NoError(r.t, err)
}

// reply reads one reply: a Hello, or an error reply's Error.
func (r *rawConn) reply() (Header, *wirepb.Hello, *wirepb.Error) {
	r.t.Helper()
	h, body, err := readAuthFrame(r.nc)
	require.NoError(r.t, err)
	require.Equal(r.t, OpHello, h.Op)
	if h.Flags&FlagError != 0 {
		var e wirepb.Error
		require.NoError(r.t, proto.Unmarshal(body, &e))
		return h, nil, &e
	}
	var hello wirepb.Hello
	require.NoError(r.t, proto.Unmarshal(body, &hello))
	return h, &hello, nil
}

func readAuthFrame(rd io.Reader) (Header, []byte, error) {
	hb := make([]byte, HeaderSize)
	if _, err := io.ReadFull(rd, hb); err != nil {
		return Header{}, nil, err
	}
	h, err := DecodeHeader(hb)
	if err != nil {
		return Header{}, nil, err
	}
	body := make([]byte, h.BodyLen)
	if _, err := io.ReadFull(rd, body); err != nil {
		return Header{}, nil, err
	}
	return h, body, nil
}

// mac computes the proofs as spec.md defines them, independently of the
// package's code.
func mac(token, label string, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func clientNonce() []byte { return bytes.Repeat([]byte{0xc1}, 32) }

// challenge runs the challenge handshake by hand with token, and returns
// the final answer. It does not check the server's proof (the server
// side is under test), but reports it.
func (r *rawConn) challenge(token string) (serverProved bool, reply *wirepb.Hello, e *wirepb.Error) {
	r.t.Helper()
	cn := clientNonce()
	first := r.hello(1, &wirepb.Hello{Version: Version, Role: "client", Name: "raw", AuthNonce: cn})
	_, ch, e := r.reply()
	if e != nil {
		return false, nil, e
	}
	require.Len(r.t, ch.AuthNonce, 32, "the challenge's server nonce")
	sn := ch.AuthNonce
	serverProved = hmac.Equal(ch.AuthProof, mac(token, "tq-server", cn, sn))
	sum := sha256.Sum256(first)
	r.hello(2, &wirepb.Hello{Version: Version, AuthProof: mac(token, "tq-client", sn, cn, sum[:])})
	_, reply, e = r.reply()
	return serverProved, reply, e
}

// recordingServer accepts connections on a plain listener and records
// every byte each client sends; answer, if set, plays the server's part
// for the first frame (it may answer nothing). The recording ends when
// the client closes.
type recordingServer struct {
	addr string
	mu   sync.Mutex
	cond *sync.Cond // signaled as a connection ends
	got  [][]byte
	open int // connections accepted and not ended
}

func startRecording(t *testing.T, answer func(nc net.Conn, h Header, body []byte)) *recordingServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rs := &recordingServer{addr: "tcp://" + l.Addr().String()}
	rs.cond = sync.NewCond(&rs.mu)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			rs.mu.Lock()
			rs.open++
			rs.mu.Unlock()
			go func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				var rec bytes.Buffer
				tee := io.TeeReader(nc, &rec)
				if h, body, err := readAuthFrame(tee); err == nil && answer != nil {
					answer(nc, h, body)
				}
				io.Copy(io.Discard, tee) // until the client closes
				rs.mu.Lock()
				rs.got = append(rs.got, rec.Bytes())
				rs.open--
				rs.cond.Broadcast()
				rs.mu.Unlock()
			}()
		}
	}()
	return rs
}

// all waits for a first connection and for every connection accepted
// to end, and returns what they carried. (A client that gave up at once
// may be done before its connection is accepted: a WaitGroup waited on
// then raced the accept's Add, and found nothing recorded.)
func (rs *recordingServer) all() [][]byte {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for len(rs.got) == 0 || rs.open > 0 {
		rs.cond.Wait()
	}
	return rs.got
}

// accepted reports, after a moment for a connection on its way, whether
// any connection came.
func (rs *recordingServer) accepted() bool {
	time.Sleep(50 * time.Millisecond)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.open > 0 || len(rs.got) > 0
}

func writeReply(nc net.Conn, h Header, m proto.Message, flags Flags) {
	body, _ := proto.Marshal(m)
	nc.Write(append(Header{Version: Version, Flags: flags, Op: h.Op, ID: h.ID, BodyLen: uint32(len(body))}.Append(nil), body...))
}

// TestHelloNeverSendsToken: whatever a client with a token dials learns
// nothing of the token — not a peer that answers like a server without a
// token, not one that sends a challenge it cannot back, not one that
// refuses or says nothing.
func TestHelloNeverSendsToken(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(nc net.Conn, h Header, body []byte)
	}{
		{"answers as a server without a token", func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Hello{Version: Version, Role: "controller"}, FlagReply)
		}},
		{"challenges with a made-up proof", func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Hello{Version: Version, AuthNonce: bytes.Repeat([]byte{7}, 32), AuthProof: bytes.Repeat([]byte{9}, 32)}, FlagReply)
		}},
		{"refuses", func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Error{Code: wirepb.Code_CODE_UNAUTHENTICATED, Message: "wrong or missing token"}, FlagReply|FlagError)
		}},
		{"closes", func(nc net.Conn, _ Header, _ []byte) { nc.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := startRecording(t, tc.answer)
			c, _, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client", Token: authToken, Name: "n"}, ConnConfig{})
			if err == nil {
				c.Close()
			}
			got := rs.all()
			require.Len(t, got, 1)
			assert.NotContains(t, string(got[0]), authToken, "the client sent its token")
			// Its HELLO asks for the challenge instead.
			h, body, err := readAuthFrame(bytes.NewReader(got[0]))
			require.NoError(t, err)
			require.Equal(t, OpHello, h.Op)
			var hello wirepb.Hello
			require.NoError(t, proto.Unmarshal(body, &hello))
			assert.Empty(t, hello.Token)
			assert.Len(t, hello.AuthNonce, 32)
		})
	}
}

// TestClientRefusesUnprovenServer: a server that cannot prove it knows
// the client's token (it has another, or forges a challenge) is refused
// with ErrServerUnproven naming the address, and the client sends it no
// proof of its own: only a proof-less answer saying it gives up.
func TestClientRefusesUnprovenServer(t *testing.T) {
	t.Run("server with another token", func(t *testing.T) {
		_, addr := startServer(t, ServerConfig{Token: "another token"}, "tcp")
		_, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
		require.ErrorIs(t, err, ErrServerUnproven)
		assert.ErrorIs(t, err, ErrUnauthenticated)
		assert.Contains(t, err.Error(), addr)
	})
	t.Run("forged challenge", func(t *testing.T) {
		rs := startRecording(t, func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Hello{Version: Version, AuthNonce: bytes.Repeat([]byte{7}, 32), AuthProof: bytes.Repeat([]byte{9}, 32)}, FlagReply)
		})
		_, _, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
		require.ErrorIs(t, err, ErrServerUnproven)
		assert.Contains(t, err.Error(), rs.addr)
		got := rs.all()
		require.Len(t, got, 1)
		rd := bytes.NewReader(got[0])
		_, _, err = readAuthFrame(rd)
		require.NoError(t, err)
		h, body, err := readAuthFrame(rd)
		require.NoError(t, err)
		assert.Equal(t, OpHello, h.Op)
		var giveUp wirepb.Hello
		require.NoError(t, proto.Unmarshal(body, &giveUp))
		assert.Empty(t, giveUp.AuthProof, "the client sent a proof to a server that did not prove the token")
		assert.Empty(t, giveUp.Token)
		assert.Zero(t, rd.Len(), "the client sent more than its HELLOs")
	})
}

// TestWrongClientToken: a client with the wrong token is refused with
// CODE_UNAUTHENTICATED, as before the challenge: the Go client finds out
// from the server's proof, a client that sends its proof anyway from the
// server's error reply, and one that sends the token in clear as always.
func TestWrongClientToken(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			_, addr := startServer(t, ServerConfig{Token: authToken}, network)

			_, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: "wrong"}, ConnConfig{})
			require.ErrorIs(t, err, ErrUnauthenticated)
			assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, CodeOf(err))

			// Even a peer its credentials would admit is judged by its
			// proof once it asked for the challenge.
			if network == "unix" {
				_, addr := startServer(t, ServerConfig{Token: authToken, TrustPeerCred: true}, network)
				_, _, e := authDial(t, addr).challenge("wrong")
				require.NotNil(t, e)
				assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)
			}

			proved, _, e := authDial(t, addr).challenge("wrong")
			assert.False(t, proved)
			require.NotNil(t, e, "a wrong proof was accepted")
			assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)

			r := authDial(t, addr)
			r.hello(1, &wirepb.Hello{Version: Version, Role: "client", Token: "wrong"})
			_, _, e = r.reply()
			require.NotNil(t, e)
			assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)
		})
	}
}

// TestChallengeByHand: the handshake as spec.md writes it is accepted,
// the server proving the token, in one extra round trip; the right
// token's clients work on TCP, and on a unix socket with or without
// TrustPeerCred.
func TestChallengeByHand(t *testing.T) {
	for _, trust := range []bool{false, true} {
		for _, network := range []string{"tcp", "unix"} {
			_, addr := startServer(t, ServerConfig{Token: authToken, TrustPeerCred: trust, RefuseClearToken: true, Hello: &wirepb.Hello{Role: "controller"}}, network)
			proved, reply, e := authDial(t, addr).challenge(authToken)
			require.Nil(t, e, "%s trust=%v", network, trust)
			assert.True(t, proved)
			assert.Equal(t, "controller", reply.Role)
			assert.Empty(t, reply.AuthProof)

			c, reply, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
			require.NoError(t, err)
			assert.Equal(t, "controller", reply.Role)
			require.NoError(t, c.Do(t.Context(), opEcho, &wirepb.Ping{Nonce: 5}, nil, &wirepb.Ping{}, nil))
			c.Close()
		}
	}
}

// TestClearToken: a HELLO with the token in clear (a client older than
// the challenge) is accepted by default and refused with
// RefuseClearToken, which leaves the challenge, servers without a token
// and peer-credential admission as they were.
func TestClearToken(t *testing.T) {
	clear := func(addr string) (*wirepb.Hello, *wirepb.Error) {
		r := authDial(t, addr)
		r.hello(1, &wirepb.Hello{Version: Version, Role: "client", Token: authToken})
		_, reply, e := r.reply()
		return reply, e
	}
	_, addr := startServer(t, ServerConfig{Token: authToken}, "tcp")
	reply, e := clear(addr)
	require.Nil(t, e, "clear token refused by default")
	assert.Equal(t, uint32(Version), reply.Version)

	_, addr = startServer(t, ServerConfig{Token: authToken, RefuseClearToken: true}, "tcp")
	_, e = clear(addr)
	require.NotNil(t, e, "clear token accepted with RefuseClearToken")
	assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)
	assert.Contains(t, e.Message, "clear")
	c, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
	require.NoError(t, err, "the challenge refused with RefuseClearToken")
	c.Close()

	// A unix peer of this user still needs no token at all.
	_, addr = startServer(t, ServerConfig{Token: authToken, RefuseClearToken: true, TrustPeerCred: true}, "unix")
	c, _, err = Dial(t.Context(), addr, &wirepb.Hello{Role: "client"}, ConnConfig{})
	require.NoError(t, err)
	c.Close()

	// A server without a token takes a client with one, as before.
	_, addr = startServer(t, ServerConfig{RefuseClearToken: true}, "tcp")
	c, _, err = Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
	require.NoError(t, err)
	c.Close()
}

// TestReplayedProofRefused: everything a client sent in a successful
// handshake, recorded and sent again on a new connection, does not
// authenticate it: the server's nonce is new, so the proof is stale.
func TestReplayedProofRefused(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Token: authToken}, "tcp")
	_, target, err := ParseAddr(addr)
	require.NoError(t, err)

	// A proxy between the client and the server records what the client
	// sends.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	var rec bytes.Buffer
	proxied := make(chan struct{})
	go func() {
		defer close(proxied)
		cc, err := l.Accept()
		if err != nil {
			return
		}
		defer cc.Close()
		sc, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer sc.Close()
		go io.Copy(cc, sc)
		io.Copy(sc, io.TeeReader(cc, &rec))
	}()
	c, _, err := Dial(t.Context(), "tcp://"+l.Addr().String(), &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
	require.NoError(t, err)
	c.Close()
	<-proxied

	// The recording holds the client's two HELLOs.
	rd := bytes.NewReader(rec.Bytes())
	h1, b1, err := readAuthFrame(rd)
	require.NoError(t, err)
	h2, b2, err := readAuthFrame(rd)
	require.NoError(t, err, "the client sent one HELLO: no challenge")
	require.Equal(t, OpHello, h1.Op)
	require.Equal(t, OpHello, h2.Op)
	var second wirepb.Hello
	require.NoError(t, proto.Unmarshal(b2, &second))
	require.NotEmpty(t, second.AuthProof)

	r := authDial(t, addr)
	r.send(h1, b1)
	_, ch, e := r.reply()
	require.Nil(t, e)
	require.NotEmpty(t, ch.AuthNonce)
	r.send(h2, b2)
	_, reply, e := r.reply()
	require.Nil(t, reply, "a replayed proof was accepted")
	require.NotNil(t, e)
	assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code)
}

// TestRequireServerProof: with ConnConfig.RequireServerProof a client
// with a token refuses a peer that answers its HELLO without the
// challenge (as a server run with --insecure does, and as any peer can),
// naming the address and the setting, and sends it nothing after its
// HELLO; without the setting it connects as before; a server with the
// token passes; without a token the setting is a configuration error,
// before anything is dialed.
func TestRequireServerProof(t *testing.T) {
	plain := func(nc net.Conn, h Header, _ []byte) {
		writeReply(nc, h, &wirepb.Hello{Version: Version, Role: "controller"}, FlagReply)
	}
	t.Run("refuses a server that answers without the challenge", func(t *testing.T) {
		rs := startRecording(t, plain)
		c, _, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{RequireServerProof: true})
		if c != nil {
			c.Close()
		}
		require.ErrorIs(t, err, ErrServerUnproven)
		assert.ErrorIs(t, err, ErrUnauthenticated)
		assert.Contains(t, err.Error(), rs.addr)
		assert.Contains(t, err.Error(), "RequireServerProof")
		assert.Contains(t, err.Error(), "TQ_REQUIRE_SERVER_PROOF")
		got := rs.all()
		require.Len(t, got, 1)
		rd := bytes.NewReader(got[0])
		h, body, err := readAuthFrame(rd)
		require.NoError(t, err)
		assert.Equal(t, OpHello, h.Op)
		var hello wirepb.Hello
		require.NoError(t, proto.Unmarshal(body, &hello))
		assert.Len(t, hello.AuthNonce, AuthNonceLen)
		assert.Empty(t, hello.Token)
		assert.Zero(t, rd.Len(), "the client sent more than its HELLO")
	})
	t.Run("without it connects as before", func(t *testing.T) {
		rs := startRecording(t, plain)
		c, reply, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{})
		require.NoError(t, err)
		assert.Equal(t, "controller", reply.Role)
		assert.False(t, c.ServerProved())
		c.Close()
	})
	t.Run("a server with the token passes", func(t *testing.T) {
		for _, network := range []string{"tcp", "unix"} {
			_, addr := startServer(t, ServerConfig{Token: authToken}, network)
			c, _, err := Dial(t.Context(), addr, &wirepb.Hello{Role: "client", Token: authToken}, ConnConfig{RequireServerProof: true})
			require.NoError(t, err, network)
			assert.True(t, c.ServerProved())
			require.NoError(t, c.Do(t.Context(), opEcho, &wirepb.Ping{Nonce: 5}, nil, &wirepb.Ping{}, nil))
			c.Close()
		}
	})
	t.Run("no token is a configuration error", func(t *testing.T) {
		rs := startRecording(t, plain)
		_, _, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client"}, ConnConfig{RequireServerProof: true})
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "RequireServerProof")
		assert.Contains(t, err.Error(), rs.addr)
		assert.False(t, rs.accepted(), "the client dialed")
	})
}
