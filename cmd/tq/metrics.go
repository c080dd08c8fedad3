package main

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/tqgo/tq/internal/auth"
	tqmetrics "github.com/tqgo/tq/metrics"
	"github.com/tqgo/tq/wire"
)

// observer is the wire observer for servers of a role: nil without
// --metrics.
func (s *server) observer(role string) wire.Observer {
	if s.metrics == nil {
		return nil
	}
	return s.metrics.Observer(role)
}

// metricsAddr resolves --metrics: a bare PORT or :PORT listens on
// loopback only; HOST:PORT as given.
func metricsAddr(a string) (string, error) {
	if _, err := strconv.ParseUint(a, 10, 16); err == nil {
		return net.JoinHostPort("127.0.0.1", a), nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", err
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// startMetrics serves --metrics: the registry every server of the
// process reports to, at http://ADDR/metrics, and the probes of a
// process supervisor (Kubernetes) at /healthz and /readyz. It runs
// before the servers start, so that they can announce the endpoint and
// /readyz can say "starting".
func (s *server) startMetrics() error {
	if s.cfg.Metrics == "" {
		return nil
	}
	addr, _ := metricsAddr(s.cfg.Metrics) // validated
	s.metrics = tqmetrics.New()
	mux := http.NewServeMux()
	mux.Handle("/metrics", requireBearer(s.cfg.metricsToken, s.metrics.Handler()))
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/readyz", s.readyz)
	url, err := s.serveHTTP("--metrics", s.bound.metrics, addr, mux, metricsLimits)
	if err != nil {
		return err
	}
	s.metricsURL = url + "/metrics"
	fmt.Fprintf(s.out, "tq serve: metrics on %s\n", s.metricsURL)
	return nil
}

// The life of a tq serve process, as /readyz reports it.
const (
	stateStarting int32 = iota // before "tq serve: ready"
	stateServing               // every server of the process is up
	stateStopping              // SIGTERM: finishing requests in flight
)

// healthz answers 200 for as long as the process serves HTTP: the
// liveness probe. It deliberately asks nothing of the controller: a
// storage unit whose controller is away must not be restarted for that,
// since its memory holds the cells.
func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// readyz answers 200 when the process serves (see readiness), else 503
// with the reason: the readiness probe.
func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.readiness(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	io.WriteString(w, "ready\n")
}

// readiness is nil once every server of the process is up (the
// controller listens, each storage unit has registered) and, for a
// process with storage units, while each unit's heartbeats reach the
// controller; otherwise it says what is missing.
func (s *server) readiness() error {
	switch s.state.Load() {
	case stateStarting:
		return errors.New("starting")
	case stateStopping:
		return errors.New("shutting down")
	}
	// s.units is complete and no longer written once the state is
	// serving (stored after the last append).
	var errs []error
	for _, ru := range s.units {
		if err := ru.mem.Err(); err != nil {
			errs = append(errs, fmt.Errorf("storage unit %d is not registered with the controller: %w", ru.mem.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// metricsAddrs is what the controller gives clients in CLUSTER_INFO.
func (s *server) metricsAddrs() []string {
	if s.metricsURL == "" {
		return nil
	}
	return []string{s.metricsURL}
}

// startPprof serves --pprof: Go's profiles at http://ADDR/debug/pprof/,
// but not the process's command line.
func (s *server) startPprof() error {
	if s.cfg.Pprof == "" {
		return nil
	}
	addr, _ := metricsAddr(s.cfg.Pprof) // validated
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	// Not pprof.Cmdline: the command line may carry --token, and this
	// endpoint asks for no more than the metrics token.
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not served: the command line may hold the token", http.StatusNotFound)
	})
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	url, err := s.serveHTTP("--pprof", s.bound.pprof, addr, requireBearer(s.cfg.metricsToken, capProfileSeconds(mux)), pprofLimits)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "tq serve: profiles on %s/debug/pprof/\n", url)
	return nil
}

// capProfileSeconds refuses a CPU profile, trace or delta profile
// (?seconds=N) longer than pprofMaxSeconds with 400, at once; h serves
// the others. net/http/pprof's own bound is the write timeout, which
// leaves room past pprofMaxSeconds for the profile to be written.
func capProfileSeconds(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.URL.Query().Get("seconds"); v != "" {
			if sec, err := strconv.ParseFloat(v, 64); err == nil && sec > pprofMaxSeconds {
				http.Error(w, fmt.Sprintf("seconds=%s: profiles and traces run at most %d s", v, pprofMaxSeconds), http.StatusBadRequest)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// requireBearer serves h only to requests that carry token as
// "Authorization: Bearer TOKEN" (as Prometheus sends its
// authorization.credentials_file), when token is not ""; others get 401
// and why. The comparison takes the same time whatever was sent.
func requireBearer(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var why string
		switch got := r.Header.Get("Authorization"); {
		case got == "":
			why = "the request has no Authorization header"
		case len(got) < 7 || !strings.EqualFold(got[:7], "Bearer "):
			why = "its Authorization header is not a Bearer token"
		default:
			if auth.Equal(token, strings.TrimSpace(got[7:])) {
				h.ServeHTTP(w, r)
				return
			}
			why = "the token it carries is not this server's"
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="tq"`)
		http.Error(w, fmt.Sprintf("%s needs tq serve's metrics token (--metrics-token-file, $%s) as \"Authorization: Bearer TOKEN\": %s",
			r.URL.Path, envMetricsToken, why), http.StatusUnauthorized)
	})
}

// newLogger returns the process's logger: log/slog in format (text or
// json) on w, from level on.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// httpLimits bound what the clients of an HTTP endpoint may hold:
// anyone who reaches its port (Kubernetes binds 0.0.0.0) could otherwise
// keep connections open, each an fd of the process, for ever.
type httpLimits struct {
	readHeader time.Duration // to send a request's header
	read       time.Duration // to send the whole request
	write      time.Duration // from a request's header to its reply's end
	idle       time.Duration // a keep-alive connection waiting for its next request
	conns      int           // open connections; more wait to be accepted (see evict)
	// evict: a connection past conns closes the one accepted longest ago
	// instead of waiting, so that whoever holds conns connections (the
	// port asks no token) cannot keep a liveness probe out and have the
	// process restarted.
	evict bool
}

// metricsLimits are --metrics': a scrape or a probe answers in well under
// write, so a probe is through long before 128 newer connections could
// evict it.
var metricsLimits = httpLimits{readHeader: 10 * time.Second, read: 30 * time.Second, write: 30 * time.Second, idle: time.Minute, conns: 128, evict: true}

// pprofLimits are --pprof's: write leaves room for a CPU profile or trace
// of up to pprofMaxSeconds (profile?seconds=N; net/http/pprof refuses
// longer ones, saying they exceed the write timeout).
var pprofLimits = httpLimits{readHeader: 10 * time.Second, read: 30 * time.Second, write: (pprofMaxSeconds + 30) * time.Second, idle: time.Minute, conns: 16}

const pprofMaxSeconds = 300

// maxHTTPHeader bounds a request's header on both endpoints: a scrape, a
// probe or a pprof request sends a few hundred bytes, and each of up to
// conns connections may otherwise make the server buffer Go's default of
// 1 MiB.
const maxHTTPHeader = 16 << 10

// serveHTTP serves h on addr within lim until the server closes and
// returns the address to give out, http://HOST:PORT (the host chosen as
// for the units' addresses: see unitAdvertise).
func (s *server) serveHTTP(flag string, l net.Listener, addr string, h http.Handler, lim httpLimits) (string, error) {
	if lim.evict {
		l = newEvictingListener(l, lim.conns)
	} else {
		l = netutil.LimitListener(l, lim.conns)
	}
	adv, err := systemAddrs.advertised(addr, l.Addr().(*net.TCPAddr), s.cfg.unitAdvertise(addr))
	if err != nil {
		l.Close()
		return "", fmt.Errorf("%s: advertise %s: %w", flag, addr, err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: lim.readHeader, ReadTimeout: lim.read, WriteTimeout: lim.write, IdleTimeout: lim.idle,
		MaxHeaderBytes: maxHTTPHeader}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http endpoint stopped", "flag", flag, "addr", l.Addr().String(), "err", err)
		}
	}()
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := hs.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			// A request still running (a CPU profile, a slow scrape) is
			// cut short: a routine shutdown's, not a failed one.
			hs.Close()
			err = nil
		}
		<-done
		if err != nil {
			return fmt.Errorf("stop the %s endpoint: %w", flag, err)
		}
		return nil
	})
	return "http://" + adv, nil
}

// evictingListener holds at most max connections open: accepting one
// more closes the one accepted longest ago that is still open.
type evictingListener struct {
	net.Listener
	max   int
	mu    sync.Mutex
	conns list.List // of *evictableConn, the oldest first
}

func newEvictingListener(l net.Listener, max int) *evictingListener {
	return &evictingListener{Listener: l, max: max}
}

func (l *evictingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ec := &evictableConn{Conn: c, l: l}
	var oldest *evictableConn
	l.mu.Lock()
	if l.conns.Len() >= l.max {
		oldest = l.conns.Remove(l.conns.Front()).(*evictableConn)
		oldest.elem = nil
	}
	ec.elem = l.conns.PushBack(ec)
	l.mu.Unlock()
	if oldest != nil {
		oldest.Conn.Close() // its server goroutine ends on the error
	}
	return ec, nil
}

// evictableConn is a connection of an evictingListener.
type evictableConn struct {
	net.Conn
	l    *evictingListener
	elem *list.Element // nil once closed or evicted; under l.mu
}

func (c *evictableConn) Close() error {
	c.l.mu.Lock()
	if c.elem != nil {
		c.l.conns.Remove(c.elem)
		c.elem = nil
	}
	c.l.mu.Unlock()
	return c.Conn.Close()
}
