package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/metrics"
)

// blockingCollector's Collect waits until release is closed, as a scrape
// of a busy controller with many partitions would take a while.
type blockingCollector struct {
	desc    *prometheus.Desc
	entered chan struct{}
	release chan struct{}
}

func (c *blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *blockingCollector) Collect(ch chan<- prometheus.Metric) {
	c.entered <- struct{}{}
	<-c.release
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1)
}

// TestScrapesInFlightAreBounded: the endpoint asks no token, so slow
// scrapes must not pile up, each holding a gather's memory: past
// MaxScrapes, a scrape is answered 503 at once.
func TestScrapesInFlightAreBounded(t *testing.T) {
	reg := metrics.New()
	bc := &blockingCollector{
		desc:    prometheus.NewDesc("test_blocking", "blocks", nil, nil),
		entered: make(chan struct{}, metrics.MaxScrapes+1),
		release: make(chan struct{}),
	}
	reg.Registerer().MustRegister(bc)
	srv := httptest.NewServer(reg.Handler())
	t.Cleanup(srv.Close)

	var wg sync.WaitGroup
	codes := make(chan int, metrics.MaxScrapes)
	for range metrics.MaxScrapes {
		wg.Go(func() {
			resp, err := http.Get(srv.URL)
			if !assert.NoError(t, err) {
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		})
	}
	for range metrics.MaxScrapes {
		select {
		case <-bc.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the first scrapes did not start")
		}
	}

	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(srv.URL)
	close(bc.release)
	wg.Wait()
	require.NoError(t, err, "a scrape past MaxScrapes waits instead of being refused")
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	close(codes)
	for c := range codes {
		assert.Equal(t, http.StatusOK, c)
	}
}
