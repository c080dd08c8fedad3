package wire

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// codeObserver records the code the Observer saw for each op.
type codeObserver struct {
	mu    sync.Mutex
	codes map[Op]wirepb.Code
}

func (o *codeObserver) Observe(r Served) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.codes[r.Op] = r.Code
}

// TestObservedCodeOfOversizedReply: a reply whose body would exceed
// MaxBodyLen is answered with a CODE_INVALID error ("ask for fewer
// rows"). The Observer (tq_request_errors_total{code=...}) must see the
// code the client got, not CODE_INTERNAL.
func TestObservedCodeOfOversizedReply(t *testing.T) {
	const opBig Op = 230
	obs := &codeObserver{codes: map[Op]wirepb.Code{}}
	_, addr := startServer(t, ServerConfig{Observer: obs, Loops: -1}, "tcp", func(s *Server) {
		s.Handle(opBig, func(_ context.Context, _ *Request, rw *ReplyWriter) {
			big := strings.Repeat("x", 1<<20)
			parts := make([]string, 65) // 65 MiB of body
			for i := range parts {
				parts[i] = big
			}
			rw.Reply(&wirepb.PartitionsReply{Partitions: parts}, nil, nil)
		})
	})
	c := dial(t, addr, "")
	err := c.Do(context.Background(), opBig, &wirepb.Ping{}, nil, &wirepb.PartitionsReply{}, nil)
	require.Error(t, err)
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, wirepb.Code_CODE_INVALID, re.Code, "the client's code")
	require.Eventually(t, func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		_, ok := obs.codes[opBig]
		return ok
	}, 5e9, 1e6)
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Equal(t, re.Code, obs.codes[opBig], "the Observer (metrics) must count the code the client got")
}

// TestObserverSeesRefusedHello: a HELLO refused for a wrong token is
// a request answered with CODE_UNAUTHENTICATED, yet the Observer (and so
// tq_request_errors_total{op="HELLO",code="unauthenticated"}) never sees
// it: clients failing to authenticate are invisible in the metrics.
func TestObserverSeesRefusedHello(t *testing.T) {
	obs := &codeObserver{codes: map[Op]wirepb.Code{}}
	_, addr := startServer(t, ServerConfig{Observer: obs, Token: "right"}, "tcp")
	_, _, err := Dial(context.Background(), addr, &wirepb.Hello{Role: "client", Token: "wrong"}, ConnConfig{})
	require.ErrorIs(t, err, ErrUnauthenticated)
	ok := false
	for range 100 {
		obs.mu.Lock()
		_, ok = obs.codes[OpHello]
		obs.mu.Unlock()
		if ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.True(t, ok, "the refused HELLO was never shown to the Observer")
	require.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, obs.codes[OpHello])
}

// A request whose header claims a payload that never comes (the peer
// hangs up after 10 of 1 MiB) counts in the traffic and the Observer as
// the bytes that came, not the bytes it claimed: a hostile peer could
// otherwise inflate tq_request_received_bytes_total at will.
func TestTrafficCountsPayloadThatCame(t *testing.T) {
	const opSink Op = 233
	obs := &inObserver{}
	s, addr := startServer(t, ServerConfig{Observer: obs, Loops: -1}, "tcp", func(s *Server) {
		s.Handle(opSink, func(_ context.Context, req *Request, rw *ReplyWriter) {
			rw.Error(req.ReadPayloadTo(make([]byte, req.PayloadLen)))
		})
	})
	in0, _ := s.Traffic()
	nc := rawDial(t, addr, &wirepb.Hello{Role: "client"})
	in1, _ := s.Traffic()
	body, _ := proto.Marshal(&wirepb.Ping{})
	h := Header{Version: Version, Op: opSink, ID: 2, BodyLen: uint32(len(body)), PayloadLen: 1 << 20}
	_, err := nc.Write(append(append(h.Append(nil), body...), make([]byte, 10)...))
	require.NoError(t, err)
	nc.Close()
	want := int64(HeaderSize + len(body) + 10)
	require.Eventually(t, func() bool { return obs.in.Load() != 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, want, obs.in.Load(), "the Observer's In")
	in2, _ := s.Traffic()
	require.Equal(t, want, in2-in1, "the server's traffic in (the HELLO's %d bytes before)", in1-in0)
}

type inObserver struct{ in atomic.Int64 }

func (o *inObserver) Observe(r Served) {
	if r.Op == 233 {
		o.in.Store(r.In)
	}
}
