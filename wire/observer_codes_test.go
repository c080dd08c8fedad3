package wire

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
