package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// Placement chooses the storage unit for each row of a put.
type Placement int

const (
	// LocalFirst writes a put to a unit on the client's own host when there
	// is one (the first among several chosen by the put's lowest row
	// index, or its first key's hash), as long as it has room; rows that
	// do not fit spill to the other local units, then to the other units
	// with room. Without a local unit it places as Hash does. See
	// place.go.
	LocalFirst Placement = iota
	// Hash spreads a put's rows over the units (those that are not down:
	// see [Connect]) by bytes: the rows, in order, are cut into one
	// contiguous stretch per unit, sized so that after the put every unit
	// is as full as the others (used bytes over capacity), within one row;
	// a unit already fuller than that gets none. See place.go.
	Hash
)

func (p Placement) String() string {
	if p == Hash {
		return "hash"
	}
	return "local-first"
}

// Config configures a [Client].
type Config struct {
	Placement Placement
	// Host is this client's host identity; empty means [HostID].
	Host string
	// CopyGets makes [Client.Get] (and the KV API's gets) return copies
	// the caller owns even over shared memory, where the default is
	// read-only views released with [engine.Batch.Release].
	CopyGets bool
	// MaxUnitIO bounds the unit requests (writes, reads, frees) this
	// client has in flight at once, over all its calls: a put or get that
	// spans several units talks to them concurrently, up to this many.
	// 0 means [DefaultMaxUnitIO]. One request per unit at a time already
	// keeps a unit busy (a transport stripes a large one itself), so the
	// bound is about how many units one client drives at once, and keeps
	// a client of many goroutines from opening a request to every unit
	// for each of them. A put's write that waits in its unit for room
	// (no unit has any) is not counted: held while it waits, a slot would
	// keep the client's reads and frees, which may make the room, out.
	MaxUnitIO int
}

// DefaultMaxUnitIO is [Config.MaxUnitIO] when left 0.
const DefaultMaxUnitIO = 8

// DefaultConfig returns local-first placement on this host.
func DefaultConfig() Config { return Config{Placement: LocalFirst, MaxUnitIO: DefaultMaxUnitIO} }

// Validate reports a bad configuration.
func (c Config) Validate() error {
	if c.Placement != LocalFirst && c.Placement != Hash {
		return fmt.Errorf("placement %d: %w", int(c.Placement), engine.ErrInvalid)
	}
	if c.MaxUnitIO < 0 {
		return fmt.Errorf("MaxUnitIO %d: must be 0 (the default, %d) or positive: %w", c.MaxUnitIO, DefaultMaxUnitIO, engine.ErrInvalid)
	}
	return nil
}

// Client is TQ's low-level batch API: it asks the controller where rows
// are (or should go) and moves column bytes directly to and from storage
// units. It is safe for concurrent use.
//
// Every call refuses a key, partition, field or task name that is not
// valid UTF-8, or empty where a name is required, with an error wrapping
// [engine.ErrInvalid] that quotes it, before anything is sent.
type Client struct {
	cfg  Config
	meta MetaService
	tbl  atomic.Pointer[unitTable] // see units.go
	disc *discovery                // nil: the units given to New are all there is

	closeMu sync.Mutex     // one Close at a time; later ones wait for the first
	closers []func() error // what Close releases; guarded by closeMu
	dtypes  dtypeCache     // spares reserved puts their dtype round trip
	room    roomBook       // the units' free bytes, as placement estimates them
	io      chan struct{}  // unit I/O slots (Config.MaxUnitIO)

	// closed is set by the Close of a client that holds connections
	// (Connect's), before it closes them: a read that fails from then on
	// failed because of it (see readErr), not for the unit.
	closed atomic.Bool
}

// New returns a client over a metadata service and the storage units it
// may use.
func New(meta MetaService, units []DataUnit, cfg Config) (*Client, error) {
	return newClient(meta, units, cfg, nil)
}

// newClient is New with the units the controller reports dead.
func newClient(meta MetaService, units []DataUnit, cfg Config, dead map[engine.UnitID]bool) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if meta == nil {
		return nil, fmt.Errorf("client without a metadata service: %w", engine.ErrInvalid)
	}
	if len(units) == 0 {
		return nil, fmt.Errorf("client without storage units: %w", engine.ErrInvalid)
	}
	if cfg.Host == "" {
		cfg.Host = HostID()
	}
	if _, ok := meta.(checksNames); !ok {
		meta = checkedMeta{meta} // see names.go
	}
	if cfg.MaxUnitIO == 0 {
		cfg.MaxUnitIO = DefaultMaxUnitIO
	}
	c := &Client{cfg: cfg, meta: meta, io: make(chan struct{}, cfg.MaxUnitIO)}
	t, err := newUnitTable(units, cfg.Host, dead)
	if err != nil {
		return nil, err
	}
	c.tbl.Store(t)
	return c, nil
}

// Meta returns the metadata service the client talks to.
func (c *Client) Meta() MetaService { return c.meta }

// MetricsEndpoints returns the cluster's Prometheus endpoints
// ("http://host:port/metrics", the reference's get_metrics_endpoint):
// the controller's process's, then each live storage unit's that serves
// one. It is empty when no server runs with --metrics, and for an
// in-process cluster, which serves none.
func (c *Client) MetricsEndpoints(ctx context.Context) ([]string, error) {
	if m, ok := c.meta.(interface {
		MetricsEndpoints(context.Context) ([]string, error)
	}); ok {
		return m.MetricsEndpoints(ctx)
	}
	return nil, nil
}

// Units returns the storage units the client knows, ordered by id (a
// connected client learns of units that join later: see [Connect]).
func (c *Client) Units() []DataUnit { return slices.Clone(c.tbl.Load().units) }

// Mode selects how [Client.GetMeta] picks rows.
type Mode int

const (
	// Fetch returns ready, unconsumed rows chosen by the sampler and marks
	// them consumed for the task.
	Fetch Mode = iota
	// ForceFetch returns every row of the partition, ready or not, and
	// marks nothing.
	ForceFetch
	// Insert allocates new rows.
	Insert
)

// MetaRequest asks the controller for rows.
type MetaRequest struct {
	Partition string
	// Fields names each field once: a field named twice is refused
	// (engine.ErrInvalid naming it) before anything is sent.
	Fields    []string
	BatchSize int
	Mode      Mode
	Task      string
	Options   engine.SamplingOptions
	// Sampler chooses a built-in sampler for a Fetch (the zero value: the
	// controller's); TokenBudget bounds its batch by tokens (see
	// [engine.FetchRequest]).
	Sampler     engine.SamplerSpec
	TokenBudget int64
	// Wait makes a Fetch block until enough rows are ready or ctx ends;
	// without it a Fetch that finds too few rows returns an empty meta.
	Wait bool
	// Key names a Fetch, so that [Client.GiveBack] can return its rows
	// (empty: a remote client makes one of its own).
	Key string
	// EndWhenConsumed says the partition's rows now are all it will have
	// (see [engine.FetchRequest]): once every one is produced, a Fetch may
	// get a short last batch, and then ErrDone.
	EndWhenConsumed bool
	// Hold (with a Key) holds the fetched rows for the caller until it
	// keeps them ([Client.Acknowledge]) or gives them back
	// ([Client.GiveBack]); meanwhile the task's other fetches are not told
	// the partition has nothing left (see [engine.FetchRequest.Hold]).
	// Ignored when the metadata service cannot acknowledge (it is no
	// [StreamService]): nothing could settle the hold.
	Hold bool
	// HoldGroup, with Hold, names the consumer the hold belongs to when
	// several processes fetch for one (see
	// [engine.FetchRequest.HoldGroup]).
	HoldGroup string
	// PartitionMustExist makes a Fetch of a partition the controller does
	// not have fail at once with an error wrapping [engine.ErrInvalid]
	// that names it, rather than return an empty meta or wait for a
	// producer to make it (see [engine.FetchRequest.PartitionMustExist]).
	// A remote controller must list the feature "fetch_must_exist" (an
	// older one would wait): else the Fetch fails with an error wrapping
	// [engine.ErrNotSupported] and nothing is sent.
	PartitionMustExist bool
	// PartitionGen, when not 0, makes a Fetch of a partition whose
	// generation is not this one ([engine.BatchMeta.PartitionGen] of an
	// earlier fetch: the partition was cleared, perhaps made again) fail
	// at once, or as it waits, with an error wrapping [engine.ErrDone]
	// that names the partition and the generation (see
	// [engine.FetchRequest.PartitionGen]). A remote controller must list
	// the feature "fetch_partition_gen" (an older one would wait, or
	// serve the partition made again): else the Fetch fails with an error
	// wrapping [engine.ErrNotSupported] and nothing is sent.
	PartitionGen uint64
	// Cluster, with PartitionGen, is the cluster whose controller gave
	// the generation ([engine.BatchMeta.Cluster] of the same meta): a
	// controller of another cluster, started anew without that cluster's
	// state, fails the Fetch as for a partition cleared (see
	// [engine.FetchRequest.Cluster]). "": not checked.
	Cluster string
}

// GetMeta returns rows' meta in one of the three modes.
func (c *Client) GetMeta(ctx context.Context, req MetaRequest) (*engine.BatchMeta, error) {
	switch req.Mode {
	case Fetch:
		hold := req.Hold && c.canAcknowledge()
		group := ""
		if hold {
			group = req.HoldGroup
		}
		return c.meta.Fetch(ctx, engine.FetchRequest{
			Partition: req.Partition, Task: req.Task, Fields: req.Fields,
			BatchSize: req.BatchSize, Options: req.Options, Wait: req.Wait,
			Sampler: req.Sampler, TokenBudget: req.TokenBudget, Key: req.Key,
			EndWhenConsumed: req.EndWhenConsumed, Hold: hold, HoldGroup: group,
			PartitionMustExist: req.PartitionMustExist, PartitionGen: req.PartitionGen, Cluster: req.Cluster,
		})
	case ForceFetch:
		return c.meta.ForceFetch(ctx, req.Partition, req.Fields)
	case Insert:
		if len(req.Fields) == 0 {
			return nil, fmt.Errorf("insert needs the fields it will write: %w", engine.ErrInvalid)
		}
		return c.meta.Insert(ctx, req.Partition, req.BatchSize, req.Fields)
	}
	return nil, fmt.Errorf("meta mode %d: %w", int(req.Mode), engine.ErrInvalid)
}

// refused reports whether err says the controller refused a change, so
// that nothing of it happened: an error reply naming what was wrong, or
// any error of a controller in this process. A connection that broke, a
// controller shutting down, a caller that gave up or a reply that could
// not be read leave the outcome unknown: the change may have happened,
// and what the put wrote must stay (if no cell names it, reconciliation
// frees it).
func refused(err error) bool {
	var re *wire.RemoteError
	if errors.As(err, &re) {
		switch re.Code {
		case wirepb.Code_CODE_INVALID, wirepb.Code_CODE_NOT_FOUND, wirepb.Code_CODE_DTYPE_MISMATCH,
			wirepb.Code_CODE_NOT_READY, wirepb.Code_CODE_LOST, wirepb.Code_CODE_CAPACITY, wirepb.Code_CODE_TOO_LARGE:
			return true
		}
		return false
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, engine.ErrUnavailable) && !errors.Is(err, engine.ErrClosed) && !errors.Is(err, engine.ErrCorrupt)
}
