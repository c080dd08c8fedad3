package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Roles of wire servers, the "server" label.
const (
	RoleController = "controller"
	RoleUnit       = "unit"
)

// latencyBuckets span a shared-memory control request (tens of
// microseconds) to a blocking fetch (seconds).
var latencyBuckets = []float64{
	25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
	1, 2.5, 5, 10,
}

// Registry holds a process's metrics. Create one with [New], hand
// [Registry.Observer] to each wire server, add the controller and the
// units, and serve [Registry.Handler]. Safe for concurrent use.
type Registry struct {
	reg *prometheus.Registry

	duration  *prometheus.HistogramVec
	received  *prometheus.CounterVec
	sent      *prometheus.CounterVec
	errors    *prometheus.CounterVec
	journalW  prometheus.Histogram
	journalRs prometheus.Counter

	// tq holds the collectors of the tq_ metrics, for the test that
	// compares them with the README's table.
	tq []prometheus.Collector

	mu    sync.Mutex
	ctrls []ctrlSource
	units []unitSource
}

type ctrlSource struct {
	c   *controller.Controller
	srv *controller.Server
}

type unitSource struct {
	u   *storage.Unit
	srv *storage.Server
}

// New returns a registry with the Go runtime and process collectors and
// the request metrics registered.
func New() *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tq_request_duration_seconds",
		Help:    "Time from a request's arrival to its handler's return (its reply sent), by server role, op and network.",
		Buckets: latencyBuckets,
	}, []string{"server", "op", "network"})
	r.received = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tq_request_received_bytes_total",
		Help: "Request frame bytes (header, body, payload) received, by server role, op and network.",
	}, []string{"server", "op", "network"})
	r.sent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tq_request_sent_bytes_total",
		Help: "Reply frame bytes (header, body, payload) sent, by server role, op and network.",
	}, []string{"server", "op", "network"})
	r.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tq_request_errors_total",
		Help: "Requests answered with an error, by server role, op and error code.",
	}, []string{"server", "op", "code"})
	r.journalW = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tq_journal_write_seconds",
		Help:    "Time to write (and, unless --fsync never, fsync) one group of the controller's log records.",
		Buckets: latencyBuckets,
	})
	r.journalRs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tq_journal_records_written_total",
		Help: "Controller log records written.",
	})
	r.tq = []prometheus.Collector{
		r.duration, r.received, r.sent, r.errors, r.journalW, r.journalRs,
		&ctrlCollector{r: r}, &unitCollector{r: r},
	}
	r.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	r.reg.MustRegister(r.tq...)
	return r
}

// Gatherer returns the registry for tests and for serving elsewhere.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Registerer lets a caller add metrics of its own.
func (r *Registry) Registerer() prometheus.Registerer { return r.reg }

// MaxScrapes bounds the scrapes [Registry.Handler] gathers at once; one
// more is answered 503 at once. Each scrape reads every partition's
// stats and holds its whole answer in memory, and the endpoint asks no
// token: without a bound, the connections tq serve allows (128) could
// each hold one.
const MaxScrapes = 4

// ScrapeTimeout is how long [Registry.Handler] waits for a scrape's
// figures before answering 503, under tq serve's --metrics write timeout
// (30 s) so that the scraper gets an answer rather than a reset.
const ScrapeTimeout = 20 * time.Second

// Handler serves the registry in the Prometheus exposition formats, at
// most [MaxScrapes] scrapes at once, each within [ScrapeTimeout].
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg, MaxRequestsInFlight: MaxScrapes, Timeout: ScrapeTimeout})
}

// OnJournalWrite is a [controller.Config.OnJournalWrite] hook.
func (r *Registry) OnJournalWrite(d time.Duration, records int) {
	r.journalW.Observe(d.Seconds())
	r.journalRs.Add(float64(records))
}

// AddController exports a controller (srv may be nil) at scrape time.
func (r *Registry) AddController(c *controller.Controller, srv *controller.Server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctrls = append(r.ctrls, ctrlSource{c, srv})
}

// AddUnit exports a storage unit (srv may be nil) at scrape time.
func (r *Registry) AddUnit(u *storage.Unit, srv *storage.Server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.units = append(r.units, unitSource{u, srv})
}

func (r *Registry) sources() ([]ctrlSource, []unitSource) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ctrlSource(nil), r.ctrls...), append([]unitSource(nil), r.units...)
}

// Observer returns the [wire.Observer] for wire servers of a role
// ([RoleController], [RoleUnit]). Servers of one role share the series.
func (r *Registry) Observer(role string) wire.Observer {
	return &observer{r: r, role: role}
}

// observer resolves each (op, network) pair's series once and keeps them
// in a table, so a request costs no label lookup.
type observer struct {
	r     *Registry
	role  string
	table [maxOp][len(networks)]atomic.Pointer[series]
}

// maxOp bounds the ops with a table slot; larger ones (none today) take
// the label lookup.
const maxOp = 128

var networks = [...]string{"tcp", "unix", "shmring"}

type series struct {
	duration       prometheus.Observer
	received, sent prometheus.Counter
}

func networkIdx(n string) int {
	for i, s := range networks {
		if s == n {
			return i
		}
	}
	return -1
}

func (o *observer) lookup(op wire.Op, network string) *series {
	name := opLabel(op)
	return &series{
		duration: o.r.duration.WithLabelValues(o.role, name, network),
		received: o.r.received.WithLabelValues(o.role, name, network),
		sent:     o.r.sent.WithLabelValues(o.role, name, network),
	}
}

// Observe records one answered request.
func (o *observer) Observe(s wire.Served) {
	var ser *series
	if n := networkIdx(s.Network); n >= 0 && int(s.Op) < maxOp {
		slot := &o.table[s.Op][n]
		if ser = slot.Load(); ser == nil {
			ser = o.lookup(s.Op, s.Network)
			slot.Store(ser)
		}
	} else {
		ser = o.lookup(s.Op, s.Network)
	}
	ser.duration.Observe(s.Duration.Seconds())
	ser.received.Add(float64(s.In))
	ser.sent.Add(float64(s.Out))
	if s.Code != wirepb.Code_CODE_UNSPECIFIED {
		o.r.errors.WithLabelValues(o.role, opLabel(s.Op), codeName(s.Code)).Inc()
	}
}

// opLabel is an op's label: its name, or "unknown" for an op without one
// (which wire names OP_N). A peer may send any op number; a series each
// would grow the registry without bound.
func opLabel(op wire.Op) string {
	name := op.String()
	if name == "OP_"+strconv.Itoa(int(uint16(op))) {
		return "unknown"
	}
	return name
}

// codeName is an error code's label: "not_found" for CODE_NOT_FOUND.
func codeName(c wirepb.Code) string {
	n, ok := wirepb.Code_name[int32(c)]
	if !ok {
		return strconv.Itoa(int(c))
	}
	b := []byte(n[len("CODE_"):])
	for i, ch := range b {
		if ch >= 'A' && ch <= 'Z' {
			b[i] = ch + 'a' - 'A'
		}
	}
	return string(b)
}
