package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

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
// process reports to, at http://ADDR/metrics. It runs before the servers
// start, so that they can announce the endpoint.
func (s *server) startMetrics() error {
	if s.cfg.Metrics == "" {
		return nil
	}
	addr, _ := metricsAddr(s.cfg.Metrics) // validated
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	adv, err := systemAddrs.advertised(addr, l.Addr().(*net.TCPAddr), s.cfg.unitAdvertise())
	if err != nil {
		l.Close()
		return fmt.Errorf("--metrics: advertise %s: %w", addr, err)
	}
	s.metrics = tqmetrics.New()
	s.metricsURL = "http://" + adv + "/metrics"
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.metrics.Handler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics endpoint stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
	s.closers = append(s.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := hs.Shutdown(ctx)
		<-done
		return err
	})
	fmt.Fprintf(s.out, "tq serve: metrics on %s\n", s.metricsURL)
	return nil
}

// metricsAddrs is what the controller gives clients in CLUSTER_INFO.
func (s *server) metricsAddrs() []string {
	if s.metricsURL == "" {
		return nil
	}
	return []string{s.metricsURL}
}
