package controller

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/controller/sampler"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/invariants"
	"github.com/tqgo/tq/wire/wirepb"
)

// Config configures a [Controller].
type Config struct {
	// PreAlloc is the number of row indexes reserved when a partition is
	// created, so consumers can see "not everything consumed yet" before
	// producers write (the reference's TQ_PRE_ALLOC_SAMPLE_NUM).
	PreAlloc int
	// Sampler chooses the rows of each fetch. Nil means sequential.
	Sampler engine.Sampler
	// Dir, when set, makes the metadata durable: every change is recorded
	// in a journal in Dir before the server answers, and New recovers the
	// state the directory holds (see durability.md). Empty keeps
	// everything in memory.
	Dir string
	// Fsync says when the journal's records reach the disk (default
	// journal.FsyncBatch: nothing acknowledged is lost).
	Fsync journal.Fsync
	// SnapshotBytes is the least log written before a snapshot is taken
	// (it is taken when the log since the last one outgrows both this and
	// the last snapshot; 0: DefaultSnapshotBytes).
	SnapshotBytes int64
	// UnitTimeout is how long a storage unit may go without a heartbeat
	// before it is reported dead (0: 5 s).
	UnitTimeout time.Duration
	// Logf, if set, receives reports of background trouble (a failed
	// snapshot).
	Logf func(format string, args ...any)
	// OnJournalWrite, if set, is the journal's [journal.Config.OnWrite]:
	// each group of records written, with its write (and fsync) time.
	OnJournalWrite func(d time.Duration, records int)
	// KeptBatchTTL is how long a batch a sampler keeps for a data-replica
	// group (rank-aware, GRPO with ranks) may go unfetched before, if the
	// group left it behind, its rows are given back to the task for other
	// groups (0: DefaultKeptBatchTTL; negative: never, though batches are
	// followed all the same). See keptbatches.go.
	KeptBatchTTL time.Duration
	// HeldFetchTTL is how long the rows of a held fetch
	// ([engine.FetchRequest.Hold]) stay held for its caller before, not
	// acknowledged nor given back, the controller gives them back to the
	// task (0: DefaultHeldFetchTTL; negative: never). See holds.go.
	HeldFetchTTL time.Duration
	// HeldClientGrace is how long a client whose every connection it
	// closed itself has to connect again before the controller takes it
	// for gone and gives back the rows it holds, as soon as a fetch waits
	// at the end for them (0: DefaultHeldClientGrace; negative: never, the
	// holds wait for HeldFetchTTL). See holds.go.
	HeldClientGrace time.Duration
	// MaxPartitions bounds the partitions the controller holds (0:
	// DefaultMaxPartitions; negative: no limit), so that a client that
	// names ever new partitions (a Redis {tag} per user, KV puts to a new
	// partition each) cannot grow its memory and the metrics' series per
	// partition without end. A request that would create one more is
	// refused with an error wrapping [engine.ErrCapacity] that names the
	// limit and the partition; the partitions there are keep working, and
	// clearing one makes room. Loading a state (the log and snapshots at
	// New, a checkpoint) is not bounded: what was accepted loads whole,
	// and past the limit new partitions are refused until enough are
	// cleared.
	MaxPartitions int
}

// DefaultMaxPartitions is [Config.MaxPartitions]' default: far more than
// a training job's partitions (one per step or split, a few thousand
// Redis {tag}s), while an empty partition costs the controller a few KiB
// and the metrics a dozen series, so that the most it holds stays some
// hundreds of MiB.
const DefaultMaxPartitions = 65536

// DefaultConfig returns the defaults: no pre-allocation, sequential
// sampling, in memory.
func DefaultConfig() Config { return Config{Sampler: sampler.NewSequential()} }

// Validate reports a bad configuration.
func (c Config) Validate() error {
	switch {
	case c.PreAlloc < 0:
		return fmt.Errorf("pre-allocation of %d rows: %w", c.PreAlloc, engine.ErrInvalid)
	case c.SnapshotBytes < 0:
		return fmt.Errorf("snapshot threshold of %d bytes: %w", c.SnapshotBytes, engine.ErrInvalid)
	case c.Fsync < journal.FsyncBatch || c.Fsync > journal.FsyncNever:
		return fmt.Errorf("fsync mode %d: %w", c.Fsync, engine.ErrInvalid)
	}
	return nil
}

// Controller is TQ's metadata service: partitions, the global row index
// allocator, production and consumption per cell and task, keys, tags and
// samplers. It never touches column bytes.
//
// A Controller is safe for concurrent use. Each partition has its own lock,
// so requests on different partitions do not serialize.
type Controller struct {
	cfg     Config
	sampler engine.Sampler
	// named holds the samplers fetches chose by spec
	// (engine.FetchRequest.Sampler), by the spec's text, made on first
	// use; guarded by namedMu.
	namedMu sync.Mutex
	named   map[string]engine.Sampler
	idx     *indexAllocator
	units   *Registry
	fences  fenceTable
	moves   moveTable    // recent moves of cells (drain.go)
	blocked atomic.Int64 // fetches waiting for rows (BlockedFetches)
	clients clientTable  // clients that named themselves (clients.go)

	// Identity: the cluster's id and this start's epoch (see ClusterInfo).
	cluster string
	epoch   uint64
	// starts are the recent starts the change feed's cursors may name,
	// oldest first, this one last (changes.go). Set before the
	// controller serves anyone, then only read.
	starts []startMark

	// removed is the log index of the last record that took whole
	// partitions away, replaced the state or marked cells lost: every
	// read waits for it (WaitRead).
	removed atomic.Uint64

	// The journal (nil: in memory), and while New recovers the state, the
	// replay that must not be recorded again.
	j             *journal.Journal
	replaying     bool
	snapStop      chan struct{}
	snapDone      chan struct{}
	lastSnapBytes atomic.Int64
	// pins is held (write) while a checkpoint is saved or loaded with
	// data, and read-held by a reconcile for its whole run: a reconcile
	// finds it taken and answers "not ready" (its unit tries again), and a
	// save waits for reconciles under way, so none frees an extent the
	// checkpoint reads or writes.
	pins sync.RWMutex
	// local defers frees made on units of this process (FreeLocal) while
	// a checkpoint is saved, as the server's free queue holds the others.
	local localFrees
	// spent holds keys given back before their partition existed.
	spent spentKeys

	mu    sync.RWMutex
	parts map[string]*partition
	// ids holds the keys of parts, in order: a page of partitions
	// (STATS_PAGE, LIST_KEYS of all) starts from a search, not a sort.
	// Change parts through putPart, deletePart and setParts only.
	ids     *btree.BTreeG[string]
	nextGen uint64 // the next partition's gen
	// created is closed and replaced when a partition is created, waking
	// fetches that wait for a partition that does not exist yet.
	created chan struct{}

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// changeWaiters counts the KeyChanges calls in progress (tests watch
	// a canceled one end).
	changeWaiters atomic.Int64
}

// New returns a controller: with cfg.Dir empty, an empty one in memory;
// else the state the directory's journal holds (see [Config.Dir]).
func New(cfg Config) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SnapshotBytes == 0 {
		cfg.SnapshotBytes = DefaultSnapshotBytes
	}
	s := cfg.Sampler
	if s == nil {
		s = sampler.NewSequential()
	}
	c := &Controller{
		cfg:     cfg,
		sampler: s,
		named:   make(map[string]engine.Sampler),
		idx:     newIndexAllocator(),
		units:   NewRegistry(cfg.UnitTimeout),
		parts:   make(map[string]*partition),
		ids:     btree.NewOrderedG[string](32),
		nextGen: 1,
		created: make(chan struct{}),
		done:    make(chan struct{}),
	}
	c.units.watchEvictions(c.fences.drop)
	c.units.closed = c.closed
	if cfg.Dir == "" {
		c.cluster, c.epoch = newClusterID(), 1
		c.noteStart(newNonce(), 0)
		return c, nil
	}
	c.units.log = func(op *wirepb.LogOp) { c.log(op) }
	if err := c.openJournal(); err != nil {
		return nil, err
	}
	return c, nil
}

// Close wakes every blocked fetch and change feed with [engine.ErrClosed]
// and, for a durable controller, snapshots the state and closes the
// journal. After it every call that can fail answers an error wrapping
// ErrClosed ("controller closed"), in memory as with a journal: none
// answers from, nor changes, the state Close let go of; those with no
// error to answer (Partitions, ListKeys, HasKeys, KeyCell, ...) answer
// nothing. Close is idempotent.
func (c *Controller) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.closeErr = c.closeJournal()
	})
	return c.closeErr
}

// maxPartitions returns the limit on partitions (0: none).
func (c *Controller) maxPartitions() int {
	switch n := c.cfg.MaxPartitions; {
	case n == 0:
		return DefaultMaxPartitions
	case n < 0:
		return 0
	default:
		return n
	}
}

// Units returns the unit registry.
func (c *Controller) Units() *Registry { return c.units }

func (c *Controller) get(id string) *partition {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.parts[id]
}

// errClosed is what a closed controller answers every call with.
var errClosed = fmt.Errorf("controller closed: %w", engine.ErrClosed)

// closed returns errClosed once Close has begun, else nil.
func (c *Controller) closed() error {
	select {
	case <-c.done:
		return errClosed
	default:
		return nil
	}
}

// lock returns the partition locked, or nil if it does not exist. The
// caller unlocks it. After Close it returns errClosed, for a partition
// that exists as for one that does not: every call on a partition goes
// through lock (or lockOrCreate, which calls it), so none answers from
// the state Close let go of. The check follows the partition's lock, so
// a call that waited for it while Close snapshotted the state answers
// errClosed too.
func (c *Controller) lock(id string) (*partition, error) {
	for {
		p := c.get(id)
		if p != nil {
			p.mu.Lock()
		}
		if err := c.closed(); err != nil {
			if p != nil {
				p.mu.Unlock()
			}
			return nil, err
		}
		if p == nil || !p.dropped {
			return p, nil
		}
		p.mu.Unlock() // cleared while we waited: look again
	}
}

// lockKnown is lock for a partition that must exist: one that does not is
// an error (errUnknownPartition), as is a closed controller.
func (c *Controller) lockKnown(id string) (*partition, error) {
	p, err := c.lock(id)
	if err == nil && p == nil {
		err = errUnknownPartition(id)
	}
	return p, err
}

// lockOrCreate returns the partition locked, creating it (with its
// pre-allocated rows) if needed: past Config.MaxPartitions, an error
// wrapping [engine.ErrCapacity]. A partition it creates is new: listed in
// c.parts, so that a concurrent request for it waits for its lock, but
// neither recorded in the log nor shown by Partitions. The caller
// unlocks it with c.unlockNew, and in between, once nothing can refuse
// the request, calls c.keep, which makes a new partition one for good
// and gives the record of its creation to log first; a request that is
// refused unlocks it unkept, and the partition goes again with no trace
// (not in the log, its indexes back), as if never made.
func (c *Controller) lockOrCreate(id string) (*partition, error) {
	if id == "" {
		return nil, fmt.Errorf("empty partition id: %w", engine.ErrInvalid)
	}
	for {
		if p, err := c.lock(id); p != nil || err != nil {
			return p, err
		}
		c.mu.Lock()
		if err := c.closed(); err != nil {
			c.mu.Unlock()
			return nil, err
		}
		if _, ok := c.parts[id]; ok {
			// Made meanwhile (or given up by a refused creator, which
			// takes it out at once): lock looks again.
			c.mu.Unlock()
			continue
		}
		// Only a new one: a partition of a longer id from before the
		// bound stays usable.
		if err := engine.CheckNameSize("partition", id); err != nil {
			c.mu.Unlock()
			return nil, err
		}
		// New ones count, refused yet or not: two requests cannot both
		// take the last slot.
		if max := c.maxPartitions(); max > 0 && len(c.parts) >= max {
			n := len(c.parts)
			c.mu.Unlock()
			return nil, fmt.Errorf("the controller holds %d partitions, the limit is %d (MaxPartitions, tq serve --max-partitions), and partition %q would be one more; clear one: %w",
				n, max, id, engine.ErrCapacity)
		}
		p := newPartition(id, c.nextGen)
		if c.cfg.PreAlloc > 0 {
			idx, reused, err := c.idx.allocReused(c.cfg.PreAlloc)
			if err != nil {
				c.mu.Unlock()
				return nil, err
			}
			p.addRows(idx, false)
			p.preAlloc, p.preReused = idx, reused
		}
		c.nextGen++
		p.pending.Store(true)
		p.mu.Lock() // nobody has seen p: this does not wait
		c.putPart(p)
		close(c.created)
		c.created = make(chan struct{})
		c.mu.Unlock()
		return p, nil
	}
}

// keep makes p, if the request that holds its lock created it
// (lockOrCreate), a partition for good, and returns the record of its
// creation for the request to log first, in the record of its own changes
// (none when p is not new or nothing is logged). Call it once nothing can
// refuse the request.
func (c *Controller) keep(p *partition) []*wirepb.LogOp {
	if !p.pending.Load() {
		return nil
	}
	p.pending.Store(false)
	idx := p.preAlloc
	p.preAlloc = nil
	if !c.logging() {
		return nil
	}
	return []*wirepb.LogOp{{Op: &wirepb.LogOp_Partition{Partition: &wirepb.PartitionOp{
		Partition: p.id, Gen: p.gen, CreatedUnixMs: p.created.UnixMilli(), Reserved: idx}}}}
}

// unlockNew unlocks p, locked by lockOrCreate. A new partition the request
// did not keep (it was refused) is removed: marked dropped, so that
// requests waiting for its lock look again, its indexes given back, and
// taken out of c.parts, after its lock as the lock order wants (until
// then lockAll and ClearPartition, which may find it, take it out).
func (c *Controller) unlockNew(p *partition) {
	if !p.pending.Load() {
		p.mu.Unlock()
		return
	}
	p.pending.Store(false)
	var idx []uint64
	p.rows.all(func(r *row) { idx = append(idx, r.index) })
	pre := p.preAlloc
	p.preAlloc = nil
	p.dropped = true
	p.notify()
	// idx is ascending (rows.all) and pre has no index twice: its rows
	// are pre's when they are pre sorted.
	if len(idx) == len(pre) && slices.Equal(idx, slices.Sorted(slices.Values(pre))) {
		// Its rows are its pre-allocation, untouched: undone, so that the
		// allocator is as a replay of the log, which never saw them,
		// leaves it (its queue and next).
		c.idx.unalloc(pre, p.preReused)
	} else {
		c.idx.release(idx)
	}
	p.mu.Unlock()
	c.mu.Lock()
	c.pruneLocked(p)
	c.mu.Unlock()
}

// pruneLocked takes p, dropped, out of c.parts if it is still there. The
// caller holds c.mu. Its gen goes back too where no partition was made
// after it: a replay of the log, which never saw it, leaves nextGen so,
// and the state after a restart is the state before.
func (c *Controller) pruneLocked(p *partition) {
	if c.parts[p.id] == p {
		c.deletePart(p.id)
		if c.nextGen == p.gen+1 {
			c.nextGen = p.gen
		}
	}
}

// CreatePartition creates an empty partition; it reports false if the
// partition already existed. A partition another request is still making
// is waited for (lockOrCreate): refused, it was never made, and this call
// makes it.
func (c *Controller) CreatePartition(id string) (bool, error) {
	p, err := c.lockOrCreate(id)
	if err != nil {
		return false, err
	}
	defer c.unlockNew(p)
	made := p.pending.Load()
	if ops := c.keep(p); len(ops) > 0 {
		c.log(ops...)
	}
	return made, nil
}

// Partitions lists partition ids in sorted order. A partition its first
// request is still making, which may be refused, is not listed yet.
// After Close it lists none.
func (c *Controller) Partitions() []string {
	if c.closed() != nil {
		return nil
	}
	return c.partitionIDs(false)
}

// partitionIDs lists partition ids in sorted order; with pending, those
// their first request is still making too. A walk that must see every
// cell committed after it began (a unit's cells, for a drain or a loss)
// takes them: such a request may have passed its checks already, and the
// walk waits for its lock.
func (c *Controller) partitionIDs(pending bool) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if invariants.Enabled && c.ids.Len() != len(c.parts) {
		panic(fmt.Sprintf("%d partition ids for %d partitions", c.ids.Len(), len(c.parts)))
	}
	out := make([]string, 0, len(c.parts))
	c.ids.Ascend(func(id string) bool {
		if pending || !c.parts[id].pending.Load() {
			out = append(out, id)
		}
		return true
	})
	return out
}

// partitionsFrom yields the partition ids from from on (after from, with
// after), in order, those still pending left out, as Partitions lists
// them. It looks them up a few at a time, holding c.mu only meanwhile, so
// the caller may lock partitions between ids; a partition made or
// cleared meanwhile may be seen or missed. Each batch costs a search of
// the ids, not a walk of them all.
func (c *Controller) partitionsFrom(from string, after bool) iter.Seq[string] {
	const batch = 256
	return func(yield func(string) bool) {
		for {
			ids := make([]string, 0, batch)
			c.mu.RLock()
			c.ids.AscendGreaterOrEqual(from, func(id string) bool {
				if (!after || id != from) && !c.parts[id].pending.Load() {
					ids = append(ids, id)
				}
				return len(ids) < batch
			})
			c.mu.RUnlock()
			for _, id := range ids {
				if !yield(id) {
					return
				}
			}
			if len(ids) < batch {
				return
			}
			from, after = ids[len(ids)-1], true
		}
	}
}

// putPart adds p to c.parts and its id to c.ids. The caller holds c.mu
// (or has the controller to itself, replaying).
func (c *Controller) putPart(p *partition) {
	c.parts[p.id] = p
	c.ids.ReplaceOrInsert(p.id)
}

// deletePart takes id out of c.parts and c.ids. The caller holds c.mu.
func (c *Controller) deletePart(id string) {
	delete(c.parts, id)
	c.ids.Delete(id)
}

// setParts replaces c.parts by parts (a state loaded) and rebuilds c.ids.
// The caller holds c.mu.
func (c *Controller) setParts(parts map[string]*partition) {
	c.parts = parts
	c.ids.Clear(false)
	for id := range parts {
		c.ids.ReplaceOrInsert(id)
	}
}

// allocRows makes n active rows in p: pre-allocated rows first (lowest
// index first), then new indexes. p is locked.
func (c *Controller) allocRows(p *partition, n int) ([]*row, error) {
	if n <= 0 {
		return nil, fmt.Errorf("allocate %d rows: count must be positive: %w", n, engine.ErrInvalid)
	}
	rows := p.takeReserved(n)
	if len(rows) < n {
		idx, err := c.idx.alloc(n - len(rows))
		if err != nil {
			return nil, err
		}
		rows = append(rows, p.addRows(idx, true)...)
	}
	p.madeBy(rows)
	return rows, nil
}

// Insert allocates n new rows in a partition (created if needed) and
// returns their meta: the named fields with placeholder schemas for fields
// not produced yet, no row ready. It has no bound on n × fields: the
// server's INSERT has (a reply frame's, see insert).
func (c *Controller) Insert(partition string, n int, fields []string) (*engine.BatchMeta, error) {
	return c.insert(partition, n, fields, 0)
}

// checkMetaReply refuses a meta of n rows of partition and fields
// (distinct) cells a row, whose rows' keys take keyBytes in all, that
// could not fit maxReply bytes: a row takes at least 4 bytes and its
// partition id's (index, partition, ready), and a cell location counts a
// byte (the meta holds one of 32 bytes, whatever the reply's runs make of
// them), as PRODUCTION_STATUS counts its cells.
func checkMetaReply(n int, partition string, fields, keyBytes, maxReply int) error {
	per := 4 + len(partition) + fields
	if n <= (maxReply-keyBytes)/per && keyBytes <= maxReply {
		return nil
	}
	if keyBytes == 0 {
		return fmt.Errorf("%d rows × %d fields: a meta of at least %d bytes (%d a row), beyond the %d of a reply; ask for fewer rows: %w",
			n, fields, n*per, per, maxReply, engine.ErrInvalid)
	}
	return fmt.Errorf("%d rows × %d fields and %d bytes of keys: a meta of at least %d bytes (%d a row and the keys), beyond the %d of a reply; ask for fewer rows: %w",
		n, fields, keyBytes, n*per+keyBytes, per, maxReply, engine.ErrInvalid)
}

// checkMetaFields is checkMetaReply for fields as named: counted as given
// first (no fewer than count(fields), and no allocation), and only when
// that is over maxReply as count says (the distinct ones a meta collects).
func checkMetaFields(n int, partition string, fields []string, count func([]string) int, maxReply int) error {
	if checkMetaReply(n, partition, len(fields), 0, maxReply) == nil {
		return nil
	}
	return checkMetaReply(n, partition, count(fields), 0, maxReply)
}

// insert is Insert; with maxReply (not 0: the server's, a reply frame's
// bytes), an insert whose meta takes more is refused before anything
// changes (checkMetaReply, over the distinct known fields named).
func (c *Controller) insert(partition string, n int, fields []string, maxReply int) (*engine.BatchMeta, error) {
	if n <= 0 {
		return nil, opErr("insert", partition, fmt.Errorf("batch size %d: must be positive: %w", n, engine.ErrInvalid))
	}
	p, err := c.lockOrCreate(partition)
	if err != nil {
		return nil, opErr("insert", partition, err)
	}
	defer c.unlockNew(p)
	if maxReply > 0 {
		if err := checkMetaFields(n, partition, fields, p.knownFields, maxReply); err != nil {
			return nil, opErr("insert", partition, err)
		}
	}
	rows, err := c.allocRows(p, n)
	if err != nil {
		return nil, opErr("insert", partition, err)
	}
	born := c.keep(p)
	if c.logging() {
		stamp(rows, c.log(append(born, p.rowsOp(rows, false))...))
	}
	m := p.meta(rows, fields, false)
	for _, f := range fields {
		if _, ok := m.Schema[f]; !ok {
			m.Schema[f] = engine.FieldSchema{}
		}
	}
	return m, nil
}

// BlockedFetches returns the fetches waiting now for rows to be ready.
func (c *Controller) BlockedFetches() int64 { return c.blocked.Load() }

// Indexes returns the global row indexes allocated to rows and those
// released and waiting for reuse, as [Controller.Stats] reports them for
// any partition, with or without partitions. Safe for concurrent use.
func (c *Controller) Indexes() (allocated, free int) { return c.idx.stats() }

// Fetch returns a batch chosen by the sampler and marks the sampler's
// consumed rows consumed for the task. Every returned row is ready.
//
// Errors: [engine.ErrInvalid] for a missing task or field list, a
// non-positive batch size, or, with a rank, a DP rank or batch index
// below 0 or above math.MaxInt32, or, with PartitionMustExist, a
// partition the controller does not have; [engine.ErrDone], with
// PartitionGen, when the partition of that generation is gone (cleared,
// perhaps made again, or of another cluster: Cluster), at once or as the
// fetch waits, naming the partition and the generation; [engine.ErrNotFound] for a batch a
// caching sampler kept for the DP group, which a fetch of the group took,
// when every row of it was cleared since (made again, it would not be
// the rows the group's other ranks got); the sampler's errors; with
// Wait, the context's error or [engine.ErrClosed].
func (c *Controller) Fetch(ctx context.Context, req engine.FetchRequest) (*engine.BatchMeta, error) {
	return c.fetch(ctx, req, nil)
}

// requestChecker is a sampler that can tell a request it refuses whatever
// rows are ready (the built-in ones with parameters: package sampler).
type requestChecker interface {
	Check(req engine.SampleRequest) error
}

// fetch is Fetch; with out, for the server, the meta is encoded into out
// while the partition is locked, and one that could not fit out.max gives
// back what the fetch took (fetchreply.go); the rows' tags in the meta
// are then their own maps (to read, not change) rather than copies.
func (c *Controller) fetch(ctx context.Context, req engine.FetchRequest, out *fetchReply) (*engine.BatchMeta, error) {
	switch {
	case req.Task == "":
		return nil, opErr("fetch", req.Partition, fmt.Errorf("fetch needs a task name: %w", engine.ErrInvalid))
	case len(req.Fields) == 0:
		return nil, opErr("fetch", req.Partition, fmt.Errorf("fetch needs at least one field: %w", engine.ErrInvalid))
	case req.TokenBudget < 0:
		return nil, opErr("fetch", req.Partition, fmt.Errorf("token budget %d: must not be negative: %w", req.TokenBudget, engine.ErrInvalid))
	case req.BatchSize < 0 || (req.BatchSize == 0 && req.TokenBudget == 0):
		return nil, opErr("fetch", req.Partition, fmt.Errorf("batch size %d: must be positive (or 0 with a token budget): %w", req.BatchSize, engine.ErrInvalid))
	case req.Partition == "":
		return nil, opErr("fetch", req.Partition, fmt.Errorf("empty partition id: %w", engine.ErrInvalid))
	}
	if err := checkFetchKey(req.Key); err != nil {
		return nil, opErr("fetch", req.Partition, err)
	}
	if req.Hold && req.Key == "" {
		return nil, opErr("fetch", req.Partition, fmt.Errorf("a held fetch needs a fetch key to acknowledge or give back: %w", engine.ErrInvalid))
	}
	switch {
	case req.HoldGroup != "" && !req.Hold:
		return nil, opErr("fetch", req.Partition, fmt.Errorf("a hold group without a held fetch: %w", engine.ErrInvalid))
	case len(req.HoldGroup) > maxHoldGroupLen:
		return nil, opErr("fetch", req.Partition, fmt.Errorf("hold group of %d bytes, at most %d: %w", len(req.HoldGroup), maxHoldGroupLen, engine.ErrInvalid))
	}
	if req.PartitionGen != 0 && req.Cluster != "" && req.Cluster != c.cluster {
		// This controller started without that cluster's state: the
		// partition is gone with it, and a generation of this one's
		// may match by chance.
		return nil, opErr("fetch", req.Partition, fmt.Errorf("partition %q generation %d of cluster %s is gone: this controller is cluster %s, started without that cluster's state: %w",
			req.Partition, req.PartitionGen, req.Cluster, c.cluster, engine.ErrDone))
	}
	smp, err := c.samplerFor(req.Sampler)
	if err != nil {
		return nil, opErr("fetch", req.Partition, err)
	}
	if err := checkKeptOptions(req.Options); err != nil {
		return nil, opErr("fetch", req.Partition, err)
	}
	if _, tb := smp.(*sampler.TokenBudget); req.TokenBudget > 0 && !tb {
		return nil, opErr("fetch", req.Partition, fmt.Errorf("token budget %d needs the %s sampler (FetchRequest.Sampler), not %T: %w",
			req.TokenBudget, engine.SamplerTokenBudget, smp, engine.ErrInvalid))
	}
	// A request the sampler refuses whatever is ready fails now, not once
	// BatchSize rows are (until then it would wait, or answer nothing).
	if ck, ok := smp.(requestChecker); ok {
		sreq := engine.SampleRequest{Partition: req.Partition, Task: req.Task, BatchSize: req.BatchSize, TokenBudget: req.TokenBudget, Options: req.Options}
		if err := ck.Check(sreq); err != nil {
			return nil, opErr("fetch", req.Partition, fmt.Errorf("sampler: %w", err))
		}
	}
	found := false // the partition, once (PartitionMustExist)
	for {
		var wake <-chan struct{}
		var check time.Time // when kept batches may be given back (keptbatches.go)
		p, err := c.lock(req.Partition)
		if err != nil {
			return nil, opErr("fetch", req.Partition, err)
		}
		if p == nil {
			c.mu.RLock()
			wake = c.created
			c.mu.RUnlock()
			// The partition may have been created between lock and RLock.
			if c.get(req.Partition) != nil {
				continue
			}
			if req.PartitionGen != 0 {
				return nil, opErr("fetch", req.Partition, errGenCleared(req.Partition, req.PartitionGen))
			}
			// Only the time of the request counts: a partition cleared
			// while the fetch waited is waited for as without the flag.
			if req.PartitionMustExist && !found {
				return nil, opErr("fetch", req.Partition, fmt.Errorf("partition %q does not exist: %w", req.Partition, engine.ErrInvalid))
			}
		} else {
			found = true
			// Unlock in a defer: a panicking sampler must not leave the
			// partition locked (a server recovers the panic and goes on).
			m, err := func() (*engine.BatchMeta, error) {
				defer p.mu.Unlock()
				if req.PartitionGen != 0 && p.gen != req.PartitionGen {
					return nil, errGenCleared(req.Partition, req.PartitionGen)
				}
				// A caller that gave up (canceled, not only past a
				// deadline) must not have rows consumed for it now.
				if err := ctx.Err(); err != nil && req.Wait {
					return nil, fmt.Errorf("wait for %d rows for task %q: %w", req.BatchSize, req.Task, err)
				}
				m, err := c.tryFetch(p, &req, smp, out)
				wake, check = p.changedChan(), p.nextCheck()
				if m != nil && !p.pending.Load() {
					// (A new partition's gen goes back if it is not
					// kept: pruneLocked.)
					m.PartitionGen = p.gen
				}
				return m, err
			}()
			if err != nil {
				return nil, opErr("fetch", req.Partition, err)
			}
			if m != nil {
				return m, nil
			}
		}
		if !req.Wait {
			return &engine.BatchMeta{}, nil
		}
		if err := c.waitFetch(ctx, wake, check); err != nil {
			return nil, opErr("fetch", req.Partition, fmt.Errorf("wait for %d rows for task %q: %w", req.BatchSize, req.Task, err))
		}
	}
}

// errGenCleared is a fetch's error for a partition whose generation gen,
// which the fetch asked for (FetchRequest.PartitionGen), is gone: cleared,
// perhaps made again since. It wraps ErrDone: a loader ends with the
// partition as with one done and drained.
func errGenCleared(partition string, gen uint64) error {
	return fmt.Errorf("partition %q generation %d was cleared: %w", partition, gen, engine.ErrDone)
}

// waitFetch waits for a change of the partition (wake), for the time kept
// batches may be given back (check, when not zero), or for ctx's end or
// the controller's close (errors). Its timer ends with it: a fetch woken
// by every commit for minutes used to keep one per wake until it returned.
func (c *Controller) waitFetch(ctx context.Context, wake <-chan struct{}, check time.Time) error {
	var expire <-chan time.Time
	if !check.IsZero() {
		t := time.NewTimer(time.Until(check))
		defer t.Stop()
		expire = t.C
	}
	c.blocked.Add(1)
	defer c.blocked.Add(-1)
	select {
	case <-wake:
	case <-expire:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errClosed
	}
	return nil
}

// tryFetch runs the sampler if enough rows are ready (or the partition is
// done and no more will be); nil meta means "not yet". p is locked.
func (c *Controller) tryFetch(p *partition, req *engine.FetchRequest, smp engine.Sampler, out *fetchReply) (*engine.BatchMeta, error) {
	now := time.Now()
	shared := out != nil
	// Holds past their TTL go back first: a held fetch asked again after
	// its TTL must hear that its rows were given back, not get them as
	// if still held while the next look hands them to another.
	c.expireHeld(p, now)
	if req.Key != "" {
		if c.spent.has(req.Key, now) {
			return nil, errFetchGivenBack
		}
		if b, ok := p.fetches.back.m[req.Key]; ok {
			// A held fetch given back, its entry perhaps gone
			// (givenBack): new rows would read as the old ones to its
			// caller.
			if b.task != req.Task {
				return nil, fmt.Errorf("fetch key of task %q reused by task %q: %w", b.task, req.Task, engine.ErrInvalid)
			}
			return nil, errFetchGivenBack
		}
		if e := p.fetches.get(req.Key, now); e != nil {
			// Asked again: the rows it took, not more.
			switch {
			case e.task != req.Task:
				return nil, fmt.Errorf("fetch key of task %q reused by task %q: %w", e.task, req.Task, engine.ErrInvalid)
			case e.spent:
				return nil, errFetchGivenBack
			}
			if e.held && req.Hold {
				// A hold replayed after a restart knows no holder (they
				// are not logged): its caller asking again, after a
				// redial, names it, so that its exit gives the rows
				// back sooner than the TTL.
				if e.pid == 0 {
					e.pid = req.HolderPID
				}
				if e.client == "" {
					e.client = req.HolderClient
				}
			}
			rows := make([]*row, 0, len(e.sampled))
			for _, gi := range e.sampled {
				if r, ok := p.rows.get(gi); ok {
					rows = append(rows, r)
				}
			}
			return c.replyFetch(p, req, p.meta(rows, req.Fields, shared), e.consumed, e.kept, out, now)
		}
	}
	spec := ""
	if !req.Sampler.IsZero() {
		spec = req.Sampler.String()
	}
	follows := c.followsKept(req, smp)
	gk := groupKey{spec: spec, task: req.Task, rank: req.Options.DPRank}
	if follows {
		// The ask below makes the task: bounded as the view bounds it.
		if err := p.roomForTask(req.Task); err != nil {
			return nil, err
		}
	}
	// Before the look for batches left behind: a group that asks for its
	// next batch went past the one it holds (consumed), even when its
	// step on that one outlasted the TTL.
	if follows && p.asked(gk, req.Options.BatchIndex) {
		// The ask's record makes the task in replay, as every consume
		// record does: make it here too, though the partition may have
		// none of the fetch's fields yet (no view, which would).
		p.taskSlot(req.Task)
		if c.logging() {
			c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
				Partition: p.id, Gen: p.gen, Task: req.Task, SamplerSpec: spec, AtUnixMs: now.UnixMilli(),
				Asked: (&keptRef{group: gk, batch: req.Options.BatchIndex}).pb(),
			}}})
		}
	}
	c.expireKept(p, now)
	if follows {
		if err := p.checkKeptGone(gk, req.Options.BatchIndex, smp); err != nil {
			return nil, err
		}
	}
	_, known := p.tasks[req.Task]
	v, ok, err := p.view(req.Task, req.Fields)
	if err != nil {
		return nil, err
	}
	if ok && !known && c.logging() {
		// The view made the task's slot, and the fetch may consume
		// nothing (too few rows ready, a wait that ends, a done
		// partition): a record with the task alone makes it in replay
		// too, in the same order, so that a restarted controller counts
		// the tasks (maxTasks) and numbers their slots as this one does,
		// and has the sampler the fetch chose.
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
			Partition: p.id, Gen: p.gen, Task: req.Task, SamplerSpec: spec, AtUnixMs: now.UnixMilli(),
		}}})
	}
	var ready engine.ReadySet = engine.ReadySlice(nil)
	if ok {
		ready = v
	}
	// A done partition whose every unconsumed row is ready gets no more:
	// the sampler may return a short last batch, and nothing means the
	// end (ErrDone). Pre-allocated rows never taken do not count: done
	// means no more rows. The counts are kept as rows change: O(1). Asked
	// whatever the number of ready rows: a sampler may need more than
	// BatchSize (a batch balanced across ranks, whole GRPO groups).
	final := p.done && p.unconsumed(req.Task)-p.reserved.Len() == ready.Len()
	if req.EndWhenConsumed && !final {
		// The rows there are, pre-allocated ones included, are all there
		// will be: final once every one is produced (a reserved row is
		// unconsumed and not ready).
		final = p.rows.len() > 0 && p.unconsumed(req.Task) == ready.Len()
	}
	// BatchSize ready rows are needed, unless the budget closes a batch
	// first (a token budget's BatchSize is a cap).
	if ready.Len() < req.BatchSize && !final && req.TokenBudget == 0 {
		cs, caching := smp.(engine.CachingSampler)
		if !caching || !cs.Cached(p.id, req.Task, req.Options) {
			return nil, nil
		}
	}
	var entries [][]byte
	sreq := engine.SampleRequest{
		Partition:   p.id,
		Task:        req.Task,
		BatchSize:   req.BatchSize,
		TokenBudget: req.TokenBudget,
		Final:       final,
		Ready:       ready,
		Options:     req.Options,
		Tags:        p.tagsAt,
		Origin:      p.originAt,
	}
	if c.logging() {
		sreq.Journal = func(e []byte) { entries = append(entries, e) }
	}
	// A sampler that splits a batch between ranks makes every rank's part
	// with the first fetch of its batch index (keptbatches.go).
	split, splits := smp.(engine.SplitBatchDropper)
	splitNew := follows && splits && !split.Cached(p.id, req.Task, req.Options)
	sampled, consumed, err := smp.Sample(sreq)
	if err != nil {
		return nil, fmt.Errorf("sampler: %w", err)
	}
	var made []*wirepb.KeptRef
	if splitNew && split.Cached(p.id, req.Task, req.Options) {
		made = p.madeParts(gk, req.Options.BatchIndex, split.Parts(p.id, req.Task, req.Options.BatchIndex), now, c.keptLook())
	}
	// The end of a done partition, and this rank's part of the batch is
	// empty (cleared) with nothing ready to refill it: a later part its
	// peers made for it, which it never fetched, is moved here rather
	// than the rank told ErrDone with rows still held for it.
	var moved *keptRef
	if len(sampled) == 0 && final && follows && splits {
		var rows []uint64
		if rows, moved, err = p.movePart(gk, req.Options.BatchIndex, split, sreq.Journal); err != nil {
			return nil, fmt.Errorf("sampler: %w", err)
		}
		if len(rows) > 0 {
			sampled, consumed = rows, append(consumed, rows...) // consumed already: marking is idempotent
		}
	}
	if len(sampled) == 0 {
		// The sampler may have consumed rows though this rank got
		// nothing (a batch balanced across ranks: the others' parts).
		if len(consumed) > 0 {
			if err := p.checkRows(consumed); err != nil {
				return nil, err
			}
			p.markConsumed(p.taskSlot(req.Task), consumed)
		}
		if len(entries) > 0 || len(consumed) > 0 || len(made) > 0 {
			// The sampler remembered something (a batch split across
			// ranks, say) though this rank got nothing: a restart must
			// remember it too.
			c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
				Partition: p.id, Gen: p.gen, Task: req.Task, Consumed: consumed, Sampler: entries, SamplerSpec: spec, AtUnixMs: now.UnixMilli(),
				Made: made,
			}}})
		}
		// Rows a held fetch of the task holds may still come back
		// (holds.go): not the end yet.
		if final && !p.holds(req.Task, req.HoldGroup) && !c.groupHolderGone(p, req.Task, req.HoldGroup, now) {
			return nil, fmt.Errorf("partition %q has nothing left for task %q: %w", p.id, req.Task, engine.ErrDone)
		}
		if final {
			p.lookExits(req.Task, now)
		}
		return nil, nil
	}
	// The partition's scratch slice (meta keeps nothing of it), unless the
	// batch is a big one.
	rows := slices.Grow(p.scratch[:0], len(sampled))[:len(sampled)]
	if cap(rows) <= maxScratchRows {
		p.scratch = rows[:0]
	}
	defer clear(rows) // no row pointers kept past the fetch
	for i, gi := range sampled {
		r, ok := p.rows.get(gi)
		if !ok {
			return nil, fmt.Errorf("sampler returned row %d, which is not in partition %q: %w", gi, p.id, engine.ErrInvalid)
		}
		rows[i] = r
	}
	p.markConsumed(p.taskSlot(req.Task), consumed)
	// Rows of a batch the sampler keeps for a DP group are the group's:
	// giving the fetch back (Unconsume) must not hand them to other
	// groups, since the group's peers (and this rank, asking again) get
	// them from the sampler.
	cs, caching := smp.(engine.CachingSampler)
	kept := caching && req.Options.HasRank && cs.Cached(p.id, req.Task, req.Options)
	var ref *keptRef
	if kept && follows {
		ref = p.took(gk, req.Options.BatchIndex, now, c.keptLook())
	}
	hold := false
	back := consumed // what giving the fetch back gives back
	if kept {
		back = nil
	}
	if req.Key != "" {
		e := &fetchEntry{key: req.Key, task: req.Task, sampled: sampled, consumed: back, at: now, kept: ref, pid: req.HolderPID, client: req.HolderClient}
		if req.Hold {
			e.group = req.HoldGroup
		}
		p.fetches.add(e)
		if hold = req.Hold && len(back) > 0; hold {
			p.hold(e, now)
		}
	}
	if c.logging() {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Consume{Consume: &wirepb.ConsumeOp{
			Partition: p.id, Gen: p.gen, Task: req.Task, Consumed: consumed, Sampled: sampled,
			Key: []byte(req.Key), Sampler: entries, SamplerSpec: spec, Kept: kept, KeptRef: ref.pb(), Made: made, Forgot: moved.pb(), AtUnixMs: now.UnixMilli(),
			Hold: hold, HoldGroup: heldGroup(hold, req.HoldGroup),
		}}})
	}
	return c.replyFetch(p, req, p.meta(rows, req.Fields, shared), back, ref, out, now)
}

// checkRows reports a sampler's row that is not in p.
func (p *partition) checkRows(idx []uint64) error {
	for _, gi := range idx {
		if _, ok := p.rows.get(gi); !ok {
			return fmt.Errorf("sampler consumed row %d, which is not in partition %q: %w", gi, p.id, engine.ErrInvalid)
		}
	}
	return nil
}

// lockOrSpend returns partition id locked, or, when it does not exist,
// marks key spent and returns nil: nothing was taken, and a fetch with the
// key still waiting for the partition must take nothing once it exists.
// The check and the mark are under c.mu, which partitions are made under,
// so that one made meanwhile is seen. After Close it returns errClosed.
func (c *Controller) lockOrSpend(id, key string) (*partition, error) {
	for {
		if p, err := c.lock(id); p != nil || err != nil {
			return p, err
		}
		c.mu.RLock()
		_, made := c.parts[id]
		if !made {
			c.spent.add(key, time.Now())
		}
		c.mu.RUnlock()
		if !made {
			return nil, nil
		}
	}
}

// Unconsume gives back the rows of the fetch named key (see
// [engine.FetchRequest.Key]): those it marked consumed for task that are
// still in the partition become fetchable again, and the key is spent: the
// fetch asked again answers with an error wrapping context.Canceled, and
// one that has not happened yet never takes rows. Unknown partitions and
// keys given back already change nothing; it is idempotent.
func (c *Controller) Unconsume(partition, task, key string) error {
	switch {
	case task == "":
		return opErr("unconsume", partition, fmt.Errorf("unconsume needs a task name: %w", engine.ErrInvalid))
	case key == "":
		return opErr("unconsume", partition, fmt.Errorf("unconsume needs a fetch key: %w", engine.ErrInvalid))
	}
	if err := checkFetchKey(key); err != nil {
		return opErr("unconsume", partition, err)
	}
	p, err := c.lockOrSpend(partition, key)
	if err != nil {
		return opErr("unconsume", partition, err)
	}
	if p == nil {
		return nil
	}
	defer p.mu.Unlock()
	now := time.Now()
	var idx []uint64
	if e := p.fetches.get(key, now); e != nil {
		if e.task != task {
			return opErr("unconsume", partition, fmt.Errorf("fetch key of task %q given back for task %q: %w", e.task, task, engine.ErrInvalid))
		}
		if e.spent {
			return nil
		}
		idx = e.consumed
	}
	p.unconsume(task, key, idx, now)
	if c.logging() {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
			Partition: p.id, Gen: p.gen, Task: task, Key: []byte(key), Indexes: idx, AtUnixMs: now.UnixMilli(),
		}}})
	}
	return nil
}

// UnconsumeRows gives back indexes, some of the rows of the fetch named
// key, and the fetch keeps the others: held, a held fetch holds them
// until Acknowledge keeps them or Unconsume gives them back; the key is
// not spent. For a loader that yielded part of a fetched batch and
// stopped. Rows of indexes the fetch took but does not hold for task (a
// batch kept for a DP group, rows given back already, consumption reset
// since) change nothing, so it is idempotent, and so do rows the fetch
// took that a clear removed since (nothing to give back; a new row at
// the index is not the fetch's); an index the fetch never took is an
// error wrapping [engine.ErrInvalid] naming it (the first few such, and
// how many), as is a key the partition does not know
// ([engine.ErrNotFound]). A fetch given back already changes
// nothing. It costs the fetch's rows and indexes, not their product.
func (c *Controller) UnconsumeRows(partition, task, key string, indexes []uint64) error {
	switch {
	case task == "":
		return opErr("unconsume", partition, fmt.Errorf("unconsume needs a task name: %w", engine.ErrInvalid))
	case key == "":
		return opErr("unconsume", partition, fmt.Errorf("unconsume needs a fetch key: %w", engine.ErrInvalid))
	case len(indexes) == 0:
		return opErr("unconsume", partition, fmt.Errorf("unconsume of rows names no row: %w", engine.ErrInvalid))
	}
	if err := checkFetchKey(key); err != nil {
		return opErr("unconsume", partition, err)
	}
	p, err := c.lock(partition)
	if err != nil {
		return opErr("unconsume", partition, err)
	}
	if p == nil {
		return opErr("unconsume", partition, fmt.Errorf("rows of a fetch given back: %w", errUnknownPartition(partition)))
	}
	defer p.mu.Unlock()
	now := time.Now()
	c.expireHeld(p, now)
	e := p.fetches.get(key, now)
	switch {
	case e == nil:
		if b, ok := p.fetches.back.m[key]; ok && b.task == task {
			return nil // given back whole already
		}
		return opErr("unconsume", partition, fmt.Errorf("rows of a fetch of task %q given back: no such fetch key (never made, or past its %v): %w", task, fetchKeyTTL, engine.ErrNotFound))
	case e.task != task:
		return opErr("unconsume", partition, fmt.Errorf("fetch key of task %q given back for task %q: %w", e.task, task, engine.ErrInvalid))
	case e.spent:
		return nil
	}
	// Sets, not a search of one list for each of the other's: both are
	// bounded only by the body and the batch, and the partition is locked.
	// Rows cleared since count as taken: the loader that did not yield
	// one names it, and the others must still go back. Only e.consumed
	// is given back, which no longer names them: a new row at the index
	// is not the fetch's.
	took := make(map[uint64]struct{}, len(e.sampled)+len(e.consumed)+len(e.cleared))
	for _, rows := range [3][]uint64{e.sampled, e.consumed, e.cleared} {
		for _, gi := range rows {
			took[gi] = struct{}{}
		}
	}
	named := make(map[uint64]struct{}, min(len(indexes), len(took)))
	var bad []uint64
	for _, gi := range indexes {
		if _, ok := took[gi]; ok {
			named[gi] = struct{}{}
			continue
		}
		bad = append(bad, gi)
	}
	if len(bad) > 0 {
		return opErr("unconsume", partition, fmt.Errorf("rows %s given back are not rows of the fetch (it took %d): %w",
			engine.RowList(bad), len(e.sampled)+len(e.cleared), engine.ErrInvalid))
	}
	var give []uint64
	for _, gi := range e.consumed {
		if _, ok := named[gi]; ok {
			give = append(give, gi)
		}
	}
	if len(give) == 0 {
		return nil
	}
	p.unconsumeRows(task, key, give, now)
	if c.logging() {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Unconsume{Unconsume: &wirepb.UnconsumeOp{
			Partition: p.id, Gen: p.gen, Task: task, Key: []byte(key), Indexes: give, AtUnixMs: now.UnixMilli(), Rows: true,
		}}})
	}
	return nil
}

// ForceFetch returns every row of the partition (pre-allocated ones
// included) in index order, regardless of production and consumption, and
// marks nothing consumed. With no fields it covers every produced field.
// Ready is set per row when all named fields are produced.
func (c *Controller) ForceFetch(partition string, fields []string) (*engine.BatchMeta, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return nil, opErr("force fetch", partition, err)
	}
	defer p.mu.Unlock()
	if fields == nil {
		fields = p.fieldNames()
	}
	return p.meta(p.sortedRows(), fields, false), nil
}

// RowsMeta returns the meta of the given rows over the named fields (every
// produced field when fields is nil). Unknown rows are an error naming them.
func (c *Controller) RowsMeta(partition string, indexes []uint64, fields []string) (*engine.BatchMeta, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return nil, opErr("rows meta", partition, err)
	}
	defer p.mu.Unlock()
	rows, err := p.lookup(indexes)
	if err != nil {
		return nil, opErr("rows meta", partition, err)
	}
	if fields == nil {
		fields = p.fieldNames()
	}
	return p.meta(rows, fields, false), nil
}

func (p *partition) lookup(indexes []uint64) ([]*row, error) {
	rows := make([]*row, len(indexes))
	var missing []uint64
	for i, gi := range indexes {
		r, ok := p.rows.get(gi)
		if !ok {
			missing = append(missing, gi)
			continue
		}
		rows[i] = r
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("rows %s are not in partition %q: %w", engine.RowList(missing), p.id, engine.ErrNotFound)
	}
	return rows, nil
}

// checkCluster refuses the commit of cells written to the storage units
// of another cluster (see [engine.CommitRequest]): their unit ids name
// other units here.
func (c *Controller) checkCluster(cluster string) error {
	if cluster == "" || cluster == c.cluster {
		return nil
	}
	return fmt.Errorf("the cells were written to the storage units of cluster %s, and this controller is cluster %s "+
		"(it started without that cluster's state, and its unit ids name other units); write them again: %w", cluster, c.cluster, engine.ErrLost)
}

// Commit records cells whose bytes are complete in storage: production
// bits flip, field schemas update, blocked fetches wake. It returns the
// locations of cells the commit replaced, whose storage the caller frees.
// A commit that fails validation (unknown rows, dtype conflict, malformed
// shapes, a location whose length is not the bytes its row's shape needs,
// one ending past 2^64 or past the capacity its unit registered with, or
// on a unit id above [engine.LostUnit]) changes nothing.
func (c *Controller) Commit(req engine.CommitRequest) ([]engine.CellLoc, error) {
	if err := c.checkCluster(req.Cluster); err != nil {
		return nil, opErr("commit", req.Partition, err)
	}
	p, err := c.lockKnown(req.Partition)
	if err != nil {
		return nil, opErr("commit", req.Partition, err)
	}
	defer p.mu.Unlock()
	rows, err := p.validateCommit(&req)
	if err == nil {
		// Not in validateCommit: a log written before the rule may hold
		// such a commit, and replaying it keeps the log loadable.
		err = checkLens(req.Partition, req.Fields, func(i int) string { return fmt.Sprintf("row %d", req.Indexes[i]) })
	}
	if err == nil {
		err = c.checkLocs(req.Fields, func(i int) string { return fmt.Sprintf("row %d", req.Indexes[i]) })
	}
	if err == nil {
		err = c.checkFences(req.Fields)
	}
	if err == nil {
		err = c.checkDraining(req.Fields)
	}
	if err != nil {
		return nil, opErr("commit", req.Partition, err)
	}
	replaced := p.applyCommit(&req, rows)
	n := p.feed.touch(rows)
	if c.logging() {
		op := commitOp(p, req.Indexes, req.Fields)
		op.ChangeSeq = n
		stamp(rows, c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Commit{Commit: op}}))
	}
	return replaced, nil
}

// ResolveKeys maps keys to rows, in key order. With create, missing keys
// get new rows (and the partition is created if needed); without it,
// unknown keys are an error wrapping [engine.ErrNotFound] that names them.
// With fields nil the meta covers the fields every key has produced (the
// intersection); otherwise the named fields, each of which must be known to
// the partition.
func (c *Controller) ResolveKeys(pid string, keys []string, fields []string, create bool) (*engine.BatchMeta, error) {
	m, _, err := c.ResolveKeysCreated(pid, keys, fields, create)
	return m, err
}

// ResolveKeysCreated is [Controller.ResolveKeys] that also reports the
// positions (in keys) of the keys this call created, so a caller whose
// write then fails can remove exactly those.
func (c *Controller) ResolveKeysCreated(pid string, keys []string, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	return c.resolveKeys(pid, keys, fields, create, false)
}

// ResolveKeysShared is [Controller.ResolveKeysCreated] for a server that
// encodes the meta at once (the in-process client behind KV_GET): the
// meta's tags are the rows' own maps, which the controller replaces and
// never changes, rather than copies. Read them; do not change them.
func (c *Controller) ResolveKeysShared(pid string, keys []string, fields []string, create bool) (*engine.BatchMeta, []int, error) {
	return c.resolveKeys(pid, keys, fields, create, true)
}

// resolveKeys is ResolveKeysCreated; shared as for fetch.
func (c *Controller) resolveKeys(pid string, keys []string, fields []string, create, shared bool) (*engine.BatchMeta, []int, error) {
	if err := checkKeys(keys); err != nil {
		return nil, nil, opErr("resolve keys", pid, err)
	}
	var p *partition
	var err error
	if create {
		p, err = c.lockOrCreate(pid)
	} else if p, err = c.lock(pid); err == nil && p == nil {
		err = fmt.Errorf("keys %s: %w", engine.QuoteKeys(keys), errUnknownPartition(pid))
	}
	if err != nil {
		return nil, nil, opErr("resolve keys", pid, err)
	}
	defer c.unlockNew(p)
	rows, newAt := p.lookupKeys(keys)
	// Both what is missing of the keys and of the fields, in one error:
	// a caller that mends one should not learn of the other only then.
	var missing, unknownKeys []string
	if !create && len(newAt) > 0 {
		unknownKeys = pick(keys, newAt)
		missing = append(missing, "keys "+engine.QuoteKeys(unknownKeys))
	}
	if fields != nil {
		var unknown []string
		for _, f := range fields {
			if pf, ok := p.fields[f]; !ok || pf.produced == 0 {
				unknown = append(unknown, f)
			}
		}
		if len(unknown) > 0 {
			missing = append(missing, "fields "+engine.QuoteKeys(unknown))
		}
	}
	if len(missing) > 0 {
		err := fmt.Errorf("%s not in partition %q: %w", strings.Join(missing, " and "), pid, engine.ErrNotFound)
		if unknownKeys != nil {
			err = &engine.KeysError{Keys: unknownKeys, Err: err}
		}
		return nil, nil, opErr("resolve keys", pid, err)
	}
	if err := c.createKeys(p, keys, newAt, rows); err != nil {
		return nil, nil, opErr("resolve keys", pid, err)
	}
	if born := c.keep(p); len(newAt) > 0 {
		n := p.feed.touch(pick(rows, newAt))
		if c.logging() {
			stamp(pick(rows, newAt), c.log(append(born, p.createdOp(rows, newAt, n))...))
		}
	} else if len(born) > 0 {
		c.log(born...) // not reached: a new partition has none of the keys
	}
	if fields == nil {
		return p.commonMeta(rows, shared), newAt, nil
	}
	return p.meta(rows, fields, shared), newAt, nil
}

// lookupKeys returns the rows of keys, nil where a key is not in the
// partition, and the positions of those keys.
func (p *partition) lookupKeys(keys []string) (rows []*row, missing []int) {
	rows = make([]*row, len(keys))
	for i, k := range keys {
		if r, ok := p.keys[k]; ok {
			rows[i] = r
		} else {
			missing = append(missing, i)
		}
	}
	return rows, missing
}

// createKeys gives keys[i], for each position i in at, a new row of p and
// stores it in rows[i]. On error no key is created: a key longer than
// [engine.MaxNameBytes] is refused ([engine.ErrInvalid]) here, where every
// request that makes keys makes them.
func (c *Controller) createKeys(p *partition, keys []string, at []int, rows []*row) error {
	if len(at) == 0 {
		return nil
	}
	for _, i := range at {
		if err := engine.CheckNameSize("key", keys[i]); err != nil {
			return err
		}
	}
	nr, err := c.allocRows(p, len(at))
	if err != nil {
		return err
	}
	for j, i := range at {
		r := nr[j]
		p.keySeq++
		r.seq = p.keySeq
		p.setKey(r, keys[i])
		p.keys[keys[i]] = r
		p.bySeq.ReplaceOrInsert(r)
		rows[i] = r
	}
	return nil
}

// pick returns s[i] for each position i in at.
func pick[T any](s []T, at []int) []T {
	out := make([]T, len(at))
	for j, i := range at {
		out[j] = s[i]
	}
	return out
}

// commonFields returns the fields every row has produced, sorted.
func (p *partition) commonFields(rows []*row) []string {
	var out []string
	for _, f := range p.order {
		if f.produced == 0 {
			continue
		}
		all := len(rows) > 0
		for _, r := range rows {
			if !p.has(r, f.slot) {
				all = false
				break
			}
		}
		if all {
			out = append(out, f.name)
		}
	}
	sort.Strings(out)
	return out
}

func checkKeys(keys []string) error {
	if len(keys) == 0 {
		return fmt.Errorf("empty key list: %w", engine.ErrInvalid)
	}
	for _, k := range keys {
		if k == "" {
			return fmt.Errorf("empty key: %w", engine.ErrInvalid)
		}
	}
	if dups := engine.RepeatedKeys(keys); len(dups) > 0 {
		return fmt.Errorf("duplicate keys %s: %w", engine.QuoteKeys(dups), engine.ErrInvalid)
	}
	return nil
}

// KeysOf returns the key of each row ("" for rows without a key or not in
// the partition). An empty index list is an error.
func (c *Controller) KeysOf(partition string, indexes []uint64) ([]string, error) {
	if len(indexes) == 0 {
		return nil, opErr("keys of", partition, fmt.Errorf("empty index list: %w", engine.ErrInvalid))
	}
	p, err := c.lockKnown(partition)
	if err != nil {
		return nil, opErr("keys of", partition, err)
	}
	defer p.mu.Unlock()
	out := make([]string, len(indexes))
	for i, gi := range indexes {
		if r, ok := p.rows.get(gi); ok {
			out[i] = p.keyOf(r)
		}
	}
	return out, nil
}

// SetTags merges tags[i] into the tags of row indexes[i]: keys present in
// tags[i] are set, others are kept.
func (c *Controller) SetTags(partition string, indexes []uint64, tags []engine.Tags) error {
	if len(indexes) != len(tags) {
		return opErr("set tags", partition, fmt.Errorf("%d tag maps for %d rows: %w", len(tags), len(indexes), engine.ErrInvalid))
	}
	if err := checkTagMaps(tags, func(i int) string { return fmt.Sprintf("row %d", indexes[i]) }); err != nil {
		return opErr("set tags", partition, err)
	}
	p, err := c.lockKnown(partition)
	if err != nil {
		return opErr("set tags", partition, err)
	}
	defer p.mu.Unlock()
	rows, err := p.lookup(indexes)
	if err == nil {
		err = checkTagsGrowth(p, rows, tags, false, func(i int) string { return fmt.Sprintf("row %d", indexes[i]) })
	}
	if err != nil {
		return opErr("set tags", partition, err)
	}
	var op *wirepb.LogOp
	if c.logging() {
		// Encode first: tags that cannot be recorded change nothing.
		if op, err = tagsOp(p, indexes, tags); err != nil {
			return opErr("set tags", partition, err)
		}
	}
	m := tagMerge{}
	for i, r := range rows {
		if len(tags[i]) > 0 {
			p.setTags(r, m.merge(p.tagsOf(r), tags[i]))
		}
	}
	n := p.feed.touch(rows)
	if op != nil {
		op.GetTags().ChangeSeq = n
		stamp(rows, c.log(op))
	}
	return nil
}

// ListKeys returns each partition's keys, in the order they were created,
// with their tags: one partition, or all when partition is "". An unknown
// partition gives an empty map. It reads every page (see
// [Controller.ListKeysPage]); each partition's list is as of the moment
// its page was read.
func (c *Controller) ListKeys(partition string) map[string][]engine.KeyInfo {
	out, _ := c.ListKeysWhere(partition, nil) // no filter, no error
	return out
}

// ListKeysWhere is [Controller.ListKeys] of the keys whose tags pass
// where (every key for an empty filter). Errors: [engine.ErrInvalid] for
// a malformed filter.
func (c *Controller) ListKeysWhere(partition string, where engine.TagFilter) (map[string][]engine.KeyInfo, error) {
	out := map[string][]engine.KeyInfo{}
	var cursor []byte
	for {
		page, next, err := c.ListKeysPageWhere(partition, where, cursor, 0)
		if err != nil {
			return nil, err // a bad filter: our cursors are good
		}
		for _, pk := range page {
			out[pk.Partition] = append(out[pk.Partition], pk.Keys...)
		}
		if next == nil {
			return out, nil
		}
		cursor = next
	}
}

// PartitionKeys is one partition's part of a page of keys.
type PartitionKeys struct {
	Partition string
	Keys      []engine.KeyInfo
}

const (
	// DefaultKeysPage is how many keys a page holds at most by default;
	// maxKeysPageBytes closes a page early when keys and tags are large,
	// so a page always fits a frame, and maxKeysScan when a filter passes
	// few of the keys, so a page holds a lock for a bounded time.
	DefaultKeysPage  = 4096
	maxKeysPage      = 1 << 16
	maxKeysPageBytes = 8 << 20
	maxKeysScan      = 1 << 18
)

// ListKeysPage returns a page of keys, in creation order per partition,
// partitions in id order: one partition, or all when partition is "". The
// first page has a nil cursor; each page returns the cursor of the next,
// nil after the last. A page holds at most limit keys (0:
// DefaultKeysPage; at most 65536) and about 8 MiB of keys and tags. A key
// created while pages are read appears in a later page; one cleared may
// be missed or appear. Errors: [engine.ErrInvalid] for a malformed cursor
// or limit.
func (c *Controller) ListKeysPage(partition string, cursor []byte, limit int) ([]PartitionKeys, []byte, error) {
	return c.ListKeysPageWhere(partition, nil, cursor, limit)
}

// ListKeysPageWhere is [Controller.ListKeysPage] of the keys whose tags
// pass where: the filter runs here, so only those keys are copied (and,
// through a server, sent). A page looks at no more than 262144 keys, so
// with a filter it may hold fewer than limit keys, even none, and still
// have a next cursor. Errors: also [engine.ErrInvalid] for a malformed
// filter.
func (c *Controller) ListKeysPageWhere(partition string, where engine.TagFilter, cursor []byte, limit int) ([]PartitionKeys, []byte, error) {
	return c.listKeysPage(partition, where, cursor, limit, false)
}

// listKeysPage is ListKeysPageWhere; with shared, for the server, which
// encodes the page at once, the keys' tags are the rows' own maps (to
// read, not change) rather than copies.
func (c *Controller) listKeysPage(partition string, where engine.TagFilter, cursor []byte, limit int, shared bool) ([]PartitionKeys, []byte, error) {
	switch {
	case limit < 0 || limit > maxKeysPage:
		return nil, nil, opErr("list keys", partition, fmt.Errorf("page of %d keys (1 to %d): %w", limit, maxKeysPage, engine.ErrInvalid))
	case limit == 0:
		limit = DefaultKeysPage
	}
	if err := where.Validate(); err != nil {
		return nil, nil, opErr("list keys", partition, err)
	}
	from, fromGen, afterSeq, err := decodeKeysCursor(cursor)
	if err != nil {
		return nil, nil, opErr("list keys", partition, err)
	}
	ids := slices.Values([]string{partition})
	if partition == "" {
		// Of all partitions: none may be left to look up.
		if err := c.closed(); err != nil {
			return nil, nil, opErr("list keys", partition, err)
		}
		ids = c.partitionsFrom(from, false)
	} else if from != "" && from != partition {
		return nil, nil, opErr("list keys", partition, fmt.Errorf("cursor of partition %q: %w", from, engine.ErrInvalid))
	}
	var out []PartitionKeys
	n, size, scanned := 0, 0, 0
	for id := range ids {
		p, err := c.lock(id)
		if err != nil {
			return nil, nil, opErr("list keys", partition, err)
		}
		if p == nil {
			continue
		}
		seq := uint64(0)
		if id == from && p.gen == fromGen {
			// Else the partition was cleared and made again since the
			// cursor: its keys are numbered from 1 again, all new.
			seq = afterSeq
		}
		var keys []engine.KeyInfo
		full := false
		p.bySeq.AscendGreaterOrEqual(&row{seq: seq + 1}, func(r *row) bool {
			if n == limit || size >= maxKeysPageBytes || scanned == maxKeysScan {
				full = true
				return false
			}
			scanned++
			seq = r.seq
			tags := p.tagsOf(r)
			if !where.Match(tags) {
				return true
			}
			key := p.keyOf(r)
			ki := engine.KeyInfo{Key: key, Index: r.index, Tags: tags}
			if !shared {
				ki.Tags = tags.Clone()
			}
			keys = append(keys, ki)
			n++
			size += len(key) + 16 + tags.JSONSize()
			return true
		})
		p.mu.Unlock()
		if len(keys) > 0 {
			out = append(out, PartitionKeys{Partition: id, Keys: keys})
		}
		if full {
			return out, encodeKeysCursor(id, p.gen, seq), nil
		}
	}
	return out, nil, nil
}

// A keys cursor is the partition id, its generation (a partition cleared
// and made again has another) and the creation number of the last key
// listed: uvarint(seq), uvarint(gen), then the id's bytes.
func encodeKeysCursor(partition string, gen, seq uint64) []byte {
	return append(binary.AppendUvarint(binary.AppendUvarint(nil, seq), gen), partition...)
}

func decodeKeysCursor(b []byte) (id string, gen, seq uint64, err error) {
	if len(b) == 0 {
		return "", 0, 0, nil
	}
	seq, n := binary.Uvarint(b)
	if n > 0 {
		var k int
		if gen, k = binary.Uvarint(b[n:]); k > 0 && n+k < len(b) {
			return string(b[n+k:]), gen, seq, nil
		}
	}
	return "", 0, 0, fmt.Errorf("malformed keys cursor: %w", engine.ErrInvalid)
}

// ProductionStatus reports production per row and field. Unknown fields
// are an error naming them.
func (c *Controller) ProductionStatus(partition string, fields []string) (engine.ProductionStatus, error) {
	return c.productionStatus(partition, fields, 0)
}

// productionStatus is ProductionStatus; with maxCells (not 0: the
// server's, a reply frame's bytes, at least one a cell), a status of more
// rows × fields is refused before its table is made.
func (c *Controller) productionStatus(partition string, fields []string, maxCells int) (engine.ProductionStatus, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return engine.ProductionStatus{}, opErr("production status", partition, err)
	}
	defer p.mu.Unlock()
	var unknown []string
	for _, f := range fields {
		if _, ok := p.fields[f]; !ok {
			unknown = append(unknown, f)
		}
	}
	if len(unknown) > 0 {
		return engine.ProductionStatus{}, opErr("production status", partition, fmt.Errorf("fields %s: %w", engine.QuoteKeys(unknown), engine.ErrNotFound))
	}
	if n := p.rows.len(); maxCells > 0 && len(fields) > 0 && n > maxCells/len(fields) {
		return engine.ProductionStatus{}, opErr("production status", partition, fmt.Errorf("%d rows × %d fields exceed the %d cells of a reply; ask for fewer fields: %w", n, len(fields), maxCells, engine.ErrInvalid))
	}
	slots := make([]int, len(fields))
	for j, f := range fields {
		slots[j] = p.fields[f].slot
	}
	rows := p.sortedRows()
	st := engine.ProductionStatus{Indexes: make([]uint64, len(rows)), Fields: slices.Clone(fields), Produced: make([][]bool, len(rows))}
	for i, r := range rows {
		st.Indexes[i] = r.index
		st.Produced[i] = make([]bool, len(fields))
		for j, slot := range slots {
			st.Produced[i][j] = p.has(r, slot)
		}
	}
	return st, nil
}

// ConsumptionStatus reports a task's consumption per row. A task that has
// never fetched has consumed nothing.
func (c *Controller) ConsumptionStatus(partition, task string) (engine.ConsumptionStatus, error) {
	if task == "" {
		return engine.ConsumptionStatus{}, opErr("consumption status", partition, fmt.Errorf("empty task name: %w", engine.ErrInvalid))
	}
	p, err := c.lockKnown(partition)
	if err != nil {
		return engine.ConsumptionStatus{}, opErr("consumption status", partition, err)
	}
	defer p.mu.Unlock()
	// Rows a held fetch holds may still come back (holds.go); those of a
	// hold that outlived its TTL are back now, before the look.
	c.expireHeld(p, time.Now())
	t, known := p.tasks[task]
	rows := p.sortedRows()
	st := engine.ConsumptionStatus{Indexes: make([]uint64, len(rows)), Consumed: make([]bool, len(rows))}
	for i, r := range rows {
		st.Indexes[i] = r.index
		st.Consumed[i] = known && p.isConsumed(r, t)
	}
	st.Held = p.heldRows(task)
	return st, nil
}

// CheckProduction reports whether the partition has rows and every row
// (pre-allocated included) has produced every named field. An unknown
// partition or field gives false.
func (c *Controller) CheckProduction(partition string, fields []string) bool {
	st, err := c.ProductionStatus(partition, fields)
	if err != nil || len(st.Indexes) == 0 {
		return false
	}
	for _, r := range st.Produced {
		if slices.Contains(r, false) {
			return false
		}
	}
	return true
}

// CheckConsumption reports whether the partition has rows and the task has
// consumed all of them (pre-allocated rows included).
func (c *Controller) CheckConsumption(partition, task string) bool {
	st, err := c.ConsumptionStatus(partition, task)
	if err != nil || len(st.Indexes) == 0 || len(st.Held) > 0 {
		return false
	}
	return !slices.Contains(st.Consumed, false)
}

// ResetConsumption makes a task's consumed rows fetchable again; with task
// "" it resets every task. The samplers forget the batches they keep for
// the task's DP groups (see [engine.TaskForgetter]): the new round's are
// made afresh.
func (c *Controller) ResetConsumption(partition, task string) error {
	p, err := c.lockKnown(partition)
	if err != nil {
		return opErr("reset consumption", partition, err)
	}
	defer p.mu.Unlock()
	now := time.Now()
	p.reset(task, now)
	c.forgetTask(p.id, task)
	if c.logging() {
		c.log(&wirepb.LogOp{Op: &wirepb.LogOp_ResetConsumption{ResetConsumption: &wirepb.ResetOp{Partition: p.id, Gen: p.gen, Task: task, AtUnixMs: now.UnixMilli()}}})
	}
	return nil
}

// reset makes a task's consumed rows (every task's for "") fetchable
// again, at now, and its keyed fetches from before give nothing back.
// p is locked.
func (p *partition) reset(task string, now time.Time) {
	p.forgetGroups(task)
	p.fetches.reset(task, now)
	if task == "" {
		p.resetConsumption(-1)
	} else if t, ok := p.tasks[task]; ok {
		p.resetConsumption(t)
	}
	p.notify()
}

// maxScratchRows bounds the scratch slice a partition keeps for the rows
// of its fetches.
const maxScratchRows = 1 << 16

// maxPrealloc bounds the cells a clear reserves room for up front: past it
// the slice grows as cells are found (rows may have few of their fields).
const maxPrealloc = 1 << 20

// ClearRows removes rows from a partition and releases their indexes for
// reuse. Unknown rows and partitions are ignored (clears are idempotent).
// It returns the locations of the cleared cells, whose storage the caller
// frees.
func (c *Controller) ClearRows(partition string, indexes []uint64) ([]engine.CellLoc, error) {
	p, err := c.lock(partition)
	if err != nil {
		return nil, opErr("clear rows", partition, err)
	}
	if p == nil {
		return nil, nil
	}
	_, freed := c.clearRows(p, indexes)
	p.mu.Unlock()
	return freed, nil
}

// clearRows is ClearRows with p locked; it also returns how many rows it
// removed.
func (c *Controller) clearRows(p *partition, indexes []uint64) (int, []engine.CellLoc) {
	rows := make([]*row, 0, len(indexes))
	released := make([]uint64, 0, len(indexes))
	var seen map[uint64]struct{}
	if len(indexes) > 1 {
		seen = make(map[uint64]struct{}, len(indexes))
	}
	for _, gi := range indexes {
		r, ok := p.rows.get(gi)
		if !ok {
			continue
		}
		if seen != nil {
			if _, dup := seen[gi]; dup {
				continue
			}
			seen[gi] = struct{}{}
		}
		rows = append(rows, r)
		released = append(released, gi)
	}
	n := p.feed.next(rows)
	p.feed.bury(p, rows, n)
	// One allocation for what is freed: at most a cell per field per row.
	freed := p.removeRows(rows, make([]engine.CellLoc, 0, min(len(rows)*len(p.order), maxPrealloc)))
	if len(released) > 0 {
		now := time.Now()
		c.forgetRows(p.id, released)
		p.forgetRows(released, now)
		p.notify()
		if c.logging() {
			p.removed = c.log(&wirepb.LogOp{Op: &wirepb.LogOp_ClearRows{ClearRows: &wirepb.ClearRowsOp{
				Partition: p.id, Gen: p.gen, Indexes: released, ChangeSeq: n, AtUnixMs: now.UnixMilli(),
			}}})
		}
	}
	c.idx.release(released) // under the lock: see ClearPartition
	return len(released), freed
}

// ClearKeys removes the rows of the given keys; unknown keys are ignored.
func (c *Controller) ClearKeys(partition string, keys []string) ([]engine.CellLoc, error) {
	_, freed, err := c.ClearKeysCounted(partition, keys)
	return freed, err
}

// ClearKeysCounted is ClearKeys that also answers how many of keys (each
// counted once) the partition held, found under the lock that removes
// them: of callers clearing one key at once, one hears that it was there
// (what Redis's DEL answers). The keys are looked up and their rows
// removed in one step, so a row index released meanwhile and taken by
// another key is never cleared in its place.
func (c *Controller) ClearKeysCounted(partition string, keys []string) (int, []engine.CellLoc, error) {
	p, err := c.lock(partition)
	if err != nil {
		return 0, nil, opErr("clear keys", partition, err)
	}
	if p == nil {
		return 0, nil, nil
	}
	defer p.mu.Unlock()
	var idx []uint64
	for _, k := range keys {
		if r, ok := p.keys[k]; ok {
			idx = append(idx, r.index)
		}
	}
	if len(idx) == 0 {
		return 0, nil, nil
	}
	n, freed := c.clearRows(p, idx)
	return n, freed, nil
}

// ClearPartition drops a partition with all its rows, releases its indexes
// and clears the sampler's cache for it. Clearing an unknown partition does
// nothing.
func (c *Controller) ClearPartition(partition string) ([]engine.CellLoc, error) {
	// Under c.mu and the partition's lock (the order lockAll takes): a
	// copy of the state sees the partition or its indexes free, and no
	// partition of the same id is made again before the sampler forgets
	// this one's cache, as in replay.
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.closed(); err != nil {
		return nil, opErr("clear partition", partition, err)
	}
	p, ok := c.parts[partition]
	if !ok {
		return nil, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dropped { // a new partition its request gave up (unlockNew)
		c.pruneLocked(p)
		return nil, nil
	}
	if c.logging() {
		c.noteRemoved(c.log(&wirepb.LogOp{Op: &wirepb.LogOp_ClearPartition{ClearPartition: &wirepb.ClearPartitionOp{Partition: partition, Gen: p.gen}}}))
	}
	return c.dropPartition(p), nil
}

// dropPartition removes p, its rows and its sampler cache, and releases
// its indexes (live and in replay); it returns the cells the rows held.
// The caller holds c.mu and p.mu.
func (c *Controller) dropPartition(p *partition) []engine.CellLoc {
	c.deletePart(p.id)
	c.eachSampler(func(s engine.Sampler) {
		if cs, ok := s.(engine.CachingSampler); ok {
			cs.ClearCache(p.id)
		}
	})
	rows := p.sortedRows()
	freed := p.removeRows(rows, nil)
	released := make([]uint64, 0, len(rows))
	for _, r := range rows {
		released = append(released, r.index)
	}
	p.dropped = true
	p.notify()
	c.idx.release(released)
	return freed
}

// Fields describes a partition's fields (those with produced cells and
// those registered but now empty), sorted by name. It costs O(fields).
func (c *Controller) Fields(partition string) ([]engine.FieldStats, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return nil, opErr("fields", partition, err)
	}
	defer p.mu.Unlock()
	out := make([]engine.FieldStats, 0, len(p.order))
	for _, f := range p.order {
		out = append(out, engine.FieldStats{Name: f.name, DType: f.dtype, Kind: f.kind, Shape: f.shape.Clone(), Produced: f.produced})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Stats summarizes one partition.
func (c *Controller) Stats(partition string) (engine.PartitionStats, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return engine.PartitionStats{}, opErr("stats", partition, err)
	}
	st := engine.PartitionStats{Partition: p.id, Created: p.created, Reserved: p.reserved.Len(), Keys: len(p.keys), Done: p.done}
	st.Rows = p.rows.len() - st.Reserved
	// A hold that outlived its TTL gives its rows back before the counts
	// are taken: they are not consumed, and held no longer.
	c.expireHeld(p, time.Now())
	consumed := make([]int, len(p.taskName))
	copy(consumed, p.consumedN)
	held := p.heldCounts()
	st.Produced = p.rows.producedRows()
	if invariants.Enabled {
		walked := 0
		onUnit := map[engine.UnitID]int{}
		p.rows.all(func(r *row) {
			produced := false
			p.rows.cells(r, func(_ int, cl cell) {
				produced = true
				if cl.len > 0 {
					onUnit[engine.UnitID(cl.unit&^producedBit)]++
				}
			})
			if produced {
				walked++
			}
		})
		if walked != st.Produced {
			panic(fmt.Sprintf("partition %q: %d rows produced by the count, %d by a walk", p.id, st.Produced, walked))
		}
		counted := map[engine.UnitID]int{}
		p.rows.unitsWithCells(func(u engine.UnitID, n int) { counted[u] = n })
		if !maps.Equal(onUnit, counted) {
			panic(fmt.Sprintf("partition %q: cells by unit %v by the count, %v by a walk", p.id, counted, onUnit))
		}
	}
	total := p.rows.len()
	if total > 0 {
		st.Progress = float64(st.Produced) / float64(total)
	}
	for _, f := range p.order {
		st.Fields = append(st.Fields, engine.FieldStats{Name: f.name, DType: f.dtype, Kind: f.kind, Shape: f.shape.Clone(), Produced: f.produced})
	}
	sort.Slice(st.Fields, func(i, j int) bool { return st.Fields[i].Name < st.Fields[j].Name })
	st.Tasks = p.taskStats(consumed, held, total, false)
	p.mu.Unlock()
	st.IndexesUse, st.IndexesFree = c.idx.stats()
	return st, nil
}

// Tasks describes every task a partition knows, sorted by name: those
// with rows consumed, as [Controller.Stats] lists them, and those with
// none (a fetch that took nothing yet, rows all given back, a consumption
// reset), which Stats leaves out. A task stays known while the partition
// exists. It costs O(tasks + held fetches), no walk of the rows.
func (c *Controller) Tasks(partition string) ([]engine.TaskStats, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return nil, opErr("tasks", partition, err)
	}
	defer p.mu.Unlock()
	c.expireHeld(p, time.Now()) // as Stats does
	return p.taskStats(p.consumedN, p.heldCounts(), p.rows.len(), true), nil
}

// taskStats lists the partition's tasks by name, given each slot's
// consumed count, the held counts by task and the rows (reserved ones
// included) that progress is of (consumed may be shorter than the
// slots); those with nothing consumed only with all. p is locked.
func (p *partition) taskStats(consumed []int, held map[string]int, total int, all bool) []engine.TaskStats {
	var out []engine.TaskStats
	for t, name := range p.taskName {
		n := 0
		if t < len(consumed) { // consumedN grows as tasks consume
			n = consumed[t]
		}
		if n == 0 && !all {
			// Stats does not list a task that has consumed nothing (a
			// fetch that took nothing yet, or rows all given back).
			continue
		}
		ts := engine.TaskStats{Task: name, Consumed: n, Held: held[name]}
		if total > 0 {
			ts.Progress = float64(n) / float64(total)
		}
		out = append(out, ts)
	}
	// By name: slots follow first use, which a replay may order otherwise.
	slices.SortFunc(out, func(a, b engine.TaskStats) int { return strings.Compare(a.Task, b.Task) })
	return out
}

func opErr(op, partition string, err error) error {
	var oe *engine.OpError
	if errors.As(err, &oe) {
		return err
	}
	return &engine.OpError{Op: op, Peer: partition, Err: err}
}

// KeyCount returns the number of keys in a partition, without walking
// them (Stats walks every row).
func (c *Controller) KeyCount(partition string) (int, error) {
	p, err := c.lockKnown(partition)
	if err != nil {
		return 0, opErr("key count", partition, err)
	}
	defer p.mu.Unlock()
	return len(p.keys), nil
}

// HasKeys reports, for each key, whether it is in the partition (false
// for all of an unknown partition, and after Close).
func (c *Controller) HasKeys(partition string, keys []string) []bool {
	out := make([]bool, len(keys))
	p, _ := c.lock(partition)
	if p == nil {
		return out
	}
	defer p.mu.Unlock()
	for i, k := range keys {
		_, out[i] = p.keys[k]
	}
	return out
}

// ScanKeys returns up to limit keys of one partition created after the
// key of sequence number after (0: from the first), in creation order,
// and the sequence number to pass to continue, 0 after the last. A key
// present from the first call to the last is returned once; one created
// or cleared meanwhile may or may not be (as Redis's SCAN promises).
func (c *Controller) ScanKeys(partition string, after uint64, limit int) ([]engine.KeyInfo, uint64, error) {
	if partition == "" {
		return nil, 0, opErr("scan keys", partition, fmt.Errorf("empty partition id: %w", engine.ErrInvalid))
	}
	// The partition's generation now: a scan's number is a creation
	// number in whatever partition has the id (see above).
	var gen uint64
	if p, _ := c.lock(partition); p != nil { // closed: ListKeysPage says so
		gen = p.gen
		p.mu.Unlock()
	}
	page, next, err := c.ListKeysPage(partition, encodeKeysCursor(partition, gen, after), limit)
	if err != nil {
		return nil, 0, err
	}
	var keys []engine.KeyInfo
	for _, pk := range page {
		keys = append(keys, pk.Keys...)
	}
	if next == nil {
		return keys, 0, nil
	}
	_, _, seq, err := decodeKeysCursor(next)
	return keys, seq, err
}

// KeyCell returns where one field of one key lives, and false when the
// partition, the key or the field is unknown or the cell not produced,
// or the controller closed: a single read's lookup, with nothing else
// built.
func (c *Controller) KeyCell(partition, key, field string) (engine.CellLoc, bool) {
	p, _ := c.lock(partition)
	if p == nil {
		return engine.CellLoc{}, false
	}
	defer p.mu.Unlock()
	r, ok := p.keys[key]
	if !ok {
		return engine.CellLoc{}, false
	}
	f, ok := p.fields[field]
	if !ok || !p.has(r, f.slot) {
		return engine.CellLoc{}, false
	}
	return p.rows.cell(r, f.slot).loc(), true
}

// KeyCell is one field of one key: where its bytes lie and how to read
// them, as a get of that key alone sees it.
type KeyCell struct {
	Field string
	DType engine.DType
	// Kind is Opaque (bytes, no shape) or Dense: a ragged field's cell
	// is the one row of a dense column, of its own shape (as a batch of
	// one row reports it).
	Kind  engine.Kind
	Shape engine.Shape
	Loc   engine.CellLoc
}

// KeyCells appends to out the cells of fields of key, and returns false
// when the partition or the key is unknown or any of the fields is
// unknown or not produced for the key (or the controller closed): the
// lookup of a one-key get, under one lock, with nothing else built. A
// caller that gets false answers the general way (ResolveKeys), which
// says what is missing.
func (c *Controller) KeyCells(partition, key string, fields []string, out []KeyCell) ([]KeyCell, bool) {
	p, _ := c.lock(partition)
	if p == nil {
		return out, false
	}
	defer p.mu.Unlock()
	r, ok := p.keys[key]
	if !ok || !r.active {
		return out, false
	}
	for _, name := range fields {
		f, ok := p.fields[name]
		if !ok || !p.has(r, f.slot) {
			return out, false
		}
		kc := KeyCell{Field: name, DType: f.dtype, Kind: f.kind, Loc: p.rows.cell(r, f.slot).loc()}
		switch f.kind {
		case engine.Dense:
			kc.Shape = f.shape.Clone()
		case engine.Ragged:
			kc.Kind, kc.Shape = engine.Dense, f.rowShape(r.index)
		case engine.Opaque:
		default:
			return out, false
		}
		out = append(out, kc)
	}
	return out, true
}
