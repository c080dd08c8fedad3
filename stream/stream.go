package stream

// The loader's mechanism. All(ctx) starts one goroutine, the prefetcher,
// that fetches micro-batches (a blocking FETCH, then a get of the bytes)
// and hands them to the iterator through a channel; it takes one of
// Config.Prefetch slots before each fetch and the iterator frees it as it
// takes the item, so that no more than Prefetch micro-batches are fetched
// ahead of the one the loop body has. With Prefetch 0 the iterator
// fetches each one itself when the loop asks for it.
//
//	prefetcher:  slot ← free (waits while none is) → FETCH (wait) → GET → ch ← item
//	iterator:    item ← ch → free the slot → yield → release the item's views
//
// When the loop ends early (break, a panic, the context canceled), the
// iterator cancels the prefetcher's context, waits for it to exit, and
// then disposes of every item still in the channel or in the prefetcher's
// hands: its views are released and, for a private fetch, its rows are
// given back to the task (UNCONSUME by the fetch's key). A private fetch
// the cancellation cut short (or that failed) is given back by its key
// too, before the iteration returns: its client does that only in the
// background. A shared sampler's batch (one kept for DP peers) stays with
// the group's batch index whatever its fetch's give-back, and a rank that
// restarts at Loader.Next gets it; its fetch is keyed and given back all
// the same, once (a failure changes nothing: the batch stays kept), so
// that the controller knows no rank of this loader will take it: a batch
// every fetch of which was given back and that nobody fetches again for
// the controller's kept-batch TTL goes back to the task for the other
// groups (the group never came back). Not given back, a prefetched batch
// below the last index the prefetcher asked for counted as one the group
// went past, consumed for good.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
)

// Config configures a [Loader].
type Config struct {
	// Partitions are consumed in order, one per global step: the loader
	// moves to the next when the current one has nothing left for this
	// rank (its producer marked it done and it is drained). At least
	// one, each named once.
	Partitions []string
	// Task is the consumer's name; consumption is tracked per task.
	Task string
	// Fields are the columns each micro-batch holds.
	Fields []string
	// MicroBatchSize is the number of rows per micro-batch (per DP rank).
	// With TokenBudget it is a cap on rows (0: none).
	MicroBatchSize int
	// TokenBudget, when positive, bounds each micro-batch by the sum of its
	// rows' "total_lengths" tags instead; it needs the token_budget
	// sampler.
	TokenBudget int64
	// DPRank is this rank's data-parallel group, in [0, DPSize): every
	// rank that must see identical micro-batches (TP/PP/CP peers) passes
	// the same DPRank. DPSize is the number of groups.
	DPRank, DPSize int
	// Sampler chooses the rows. The zero value is rank_aware. The shared
	// samplers (rank_aware, seqlen_balanced, token_budget) give every rank
	// of a group the same micro-batches and groups disjoint ones; their
	// DPSize is Config.DPSize. The private ones (sequential, grpo) hand
	// each fetch to one rank alone. Those that take whole groups (grpo,
	// seqlen_balanced, token_budget) need a MicroBatchSize that is a
	// multiple of the group size N; the others take no N.
	Sampler engine.SamplerSpec
	// Continuous keeps the loader waiting for more rows after the last
	// partition is drained, even one marked done (or cleared: it then
	// follows whichever partition of that id is made next); without it
	// (finite mode) the iteration ends there.
	Continuous bool
	// EndWhenConsumed also counts a partition as drained, as the
	// reference's check_consumption_status does, once the task has
	// consumed every row it has, pre-allocated ones included: with the
	// controller's PreAlloc set to the number of rows a step will have,
	// a partition ends without MarkDone. The loader then waits for rows
	// PollInterval at a time and asks between the waits. Without
	// pre-allocation a consumer faster than its producer can end before
	// the producer is finished: prefer MarkDone. Once every row is
	// produced the last micro-batch may be short (the fetches say
	// EndWhenConsumed to the controller), as from a partition marked
	// done; without pre-allocation that is whenever the producer lags.
	EndWhenConsumed bool
	// PartitionMustExist makes the loader fail, with an error wrapping
	// [engine.ErrInvalid] that names the partition, when a partition it
	// gets to does not exist on the controller, rather than wait for a
	// producer to make it (a misspelled name would wait for ever): each
	// of Partitions must be made (a put, Insert, MarkDone) before the
	// loader gets to it. A remote controller must list the feature
	// "fetch_must_exist": else the iteration fails with an error wrapping
	// [engine.ErrNotSupported].
	PartitionMustExist bool
	// Prefetch is how many micro-batches are fetched ahead while the loop
	// body runs (0: none; each is fetched when the loop asks for it).
	Prefetch int
	// Start is where the iteration begins: a rank that restarts passes
	// the Loader.Next its previous run ended at, and gets the micro-batches
	// of a shared sampler that it never yielded. With a generation
	// (Position.Gen), the partition at Start.Step ends for the loader, as
	// a drained one does, when that generation of it is gone (cleared,
	// perhaps made again, or of a controller started anew in memory),
	// rather than be waited for as one not made yet. A remote controller
	// must then list the feature "fetch_partition_gen": else the
	// iteration fails with an error wrapping [engine.ErrNotSupported].
	Start Position
	// PollInterval is how long the loader waits before looking again at a
	// drained partition in continuous mode, and how long a wait for rows
	// lasts with EndWhenConsumed (0: 100 ms).
	PollInterval time.Duration
	// Logger reports a give-back of unyielded rows that failed for good
	// (see [Loader.Err]); nil: slog.Default().
	Logger *slog.Logger
}

// Position is a place in the stream: the partition (its index in
// Config.Partitions) and the micro-batch index within it, with the
// generation of that partition once the loader has had a micro-batch of
// it. Positions compare with == and print with %v.
type Position struct {
	Step, Index int
	// Gen is the generation of the partition at Step that the loader read
	// (engine.BatchMeta.PartitionGen of its micro-batches; 0: not known,
	// as before the loader's first micro-batch of it or from a controller
	// that names none). A loader started at a Position with one names it
	// in its fetches of that partition (engine.FetchRequest.PartitionGen),
	// so that the partition, cleared meanwhile by a DP peer that finished
	// first, ends for it as a drained one does rather than be waited for
	// as one not made yet. It belongs to Step alone: a Position whose Step
	// is changed by hand must have Gen, GenOf and Cluster zeroed, or New
	// refuses it (see GenOf).
	Gen uint64
	// GenOf is the partition Gen is of (Config.Partitions[Step] when the
	// loader set it; "" without Gen). A start position whose GenOf is not
	// the partition at its Step, as one whose Step was changed by hand,
	// is refused: fetched under another partition's generation, the
	// partition at Step would end at once as a cleared one, and the
	// loader skip it. (A Position without GenOf, as loaders before it
	// gave, is taken as it was: its Gen of the partition at Step.)
	GenOf string
	// Cluster is the cluster whose controller gave Gen
	// (engine.BatchMeta.Cluster; "": not known; only with Gen). It counts
	// because a controller that keeps its state in memory starts anew as
	// another cluster and numbers its partitions from the start again: a
	// generation alone may match a partition of the new cluster by chance.
	Cluster string
}

// MaxPrefetch bounds Config.Prefetch.
const MaxPrefetch = 1024

// maxSamplerParam bounds a sampler's group size and dp size, as the
// controller's samplers do (its sampler.MaxSpecParam).
const maxSamplerParam = 1 << 16

// DefaultConfig returns a finite, rank_aware loader for one DP group,
// prefetching two micro-batches; the caller fills in partitions, task,
// fields and the micro-batch size.
func DefaultConfig() Config {
	return Config{DPSize: 1, Prefetch: 2}
}

var errConfig = fmt.Errorf("stream: bad config: %w", engine.ErrInvalid)

// Validate reports a bad configuration, naming what was wrong; the error
// wraps [engine.ErrInvalid].
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case len(c.Partitions) == 0:
		return bad("no partitions")
	case slices.Contains(c.Partitions, ""):
		return bad("an empty partition name in %q", c.Partitions)
	case engine.RepeatedKeys(c.Partitions) != nil:
		// A step of its own each time: a shared sampler would yield the
		// batches it kept for the group again, a private one nothing.
		return bad("partition %q appears twice in %q", engine.RepeatedKeys(c.Partitions)[0], c.Partitions)
	case c.Task == "":
		return bad("no task name")
	case len(c.Fields) == 0:
		return bad("no fields")
	case slices.Contains(c.Fields, ""):
		return bad("an empty field name in %q", c.Fields)
	case c.MicroBatchSize < 0:
		return bad("micro-batch size %d is negative", c.MicroBatchSize)
	case c.TokenBudget < 0:
		return bad("token budget %d is negative", c.TokenBudget)
	case c.MicroBatchSize == 0 && c.TokenBudget == 0:
		return bad("micro-batch size 0 without a token budget")
	case c.DPSize < 1:
		return bad("dp size %d: want at least 1", c.DPSize)
	case c.DPRank < 0 || c.DPRank >= c.DPSize:
		return bad("dp rank %d out of range [0, %d)", c.DPRank, c.DPSize)
	case c.Prefetch < 0 || c.Prefetch > MaxPrefetch:
		return bad("prefetch depth %d out of range [0, %d]", c.Prefetch, MaxPrefetch)
	case c.Start.Step < 0 || c.Start.Index < 0:
		return bad("start position %+v is negative", c.Start)
	case c.Start.Step > len(c.Partitions):
		return bad("start step %d is past the %d partitions", c.Start.Step, len(c.Partitions))
	case c.Start.Gen != 0 && c.Start.Step == len(c.Partitions):
		// (Loader.Next gives none past the last partition.)
		return bad("start position %+v names a generation past the %d partitions: it is of the partition at Step", c.Start, len(c.Partitions))
	case c.Start.Cluster != "" && c.Start.Gen == 0:
		return bad("start position %+v names a cluster without a generation", c.Start)
	case c.Start.GenOf != "" && c.Start.Gen == 0:
		return bad("start position %+v names the partition of a generation without one", c.Start)
	case c.Start.GenOf != "" && c.Start.GenOf != c.Partitions[c.Start.Step]:
		return bad("start position %+v: step %d is partition %q, but generation %d is of partition %q: a Position whose Step is changed by hand must have Gen, GenOf and Cluster zeroed",
			c.Start, c.Start.Step, c.Partitions[c.Start.Step], c.Start.Gen, c.Start.GenOf)
	case c.PollInterval < 0:
		return bad("poll interval %v is negative", c.PollInterval)
	}
	s := c.sampler()
	switch s.Name {
	case engine.SamplerSequential, engine.SamplerGRPO, engine.SamplerRankAware, engine.SamplerSeqlenBalanced, engine.SamplerTokenBudget:
	default:
		return bad("sampler %q is not a built-in one (%s, %s, %s, %s, %s)", s.Name, engine.SamplerSequential,
			engine.SamplerGRPO, engine.SamplerRankAware, engine.SamplerSeqlenBalanced, engine.SamplerTokenBudget)
	}
	grouped := s.Name == engine.SamplerGRPO || s.Name == engine.SamplerSeqlenBalanced || s.Name == engine.SamplerTokenBudget
	switch {
	case s.N < 0:
		return bad("sampler group size %d is negative", s.N)
	case s.N > maxSamplerParam:
		return bad("sampler %s group size %d above %d", s.Name, s.N, maxSamplerParam)
	case !grouped && s.N > 1:
		return bad("sampler %s takes no group size (got %d)", s.Name, s.N)
	case grouped && s.N > 1 && c.MicroBatchSize%s.N != 0:
		// The controller's samplers take whole groups: it would refuse
		// every fetch.
		return bad("micro-batch size %d is not a multiple of the %s sampler's group size %d", c.MicroBatchSize, s.Name, s.N)
	case s.DPSize > maxSamplerParam && (s.Name == engine.SamplerSeqlenBalanced || s.Name == engine.SamplerTokenBudget):
		// (The others are sent none.)
		return bad("sampler %s dp size %d above %d", s.Name, s.DPSize, maxSamplerParam)
	case s.DPSize != c.DPSize:
		return bad("sampler %s has dp size %d, the loader %d", s.Name, s.DPSize, c.DPSize)
	case c.TokenBudget > 0 && s.Name != engine.SamplerTokenBudget:
		return bad("a token budget needs the %s sampler, not %s", engine.SamplerTokenBudget, s.Name)
	case c.TokenBudget == 0 && s.Name == engine.SamplerTokenBudget:
		return bad("the %s sampler needs a token budget", engine.SamplerTokenBudget)
	case c.DPSize > 1 && !shared(s):
		return bad("sampler %s hands each fetch to one rank; with %d DP groups use %s, %s or %s", s.Name, c.DPSize,
			engine.SamplerRankAware, engine.SamplerSeqlenBalanced, engine.SamplerTokenBudget)
	}
	return nil
}

// sampler returns the spec the loader's fetches name.
func (c Config) sampler() engine.SamplerSpec {
	s := c.Sampler
	if s.Name == "" {
		s.Name = engine.SamplerRankAware
	}
	if s.DPSize == 0 && (s.Name == engine.SamplerSeqlenBalanced || s.Name == engine.SamplerTokenBudget) {
		s.DPSize = c.DPSize
	}
	if s.Name != engine.SamplerSeqlenBalanced && s.Name != engine.SamplerTokenBudget && s.DPSize == 0 {
		s.DPSize = c.DPSize // checked against c.DPSize; never sent for these
	}
	return s
}

// shared reports a sampler that keeps batches per DP group.
func shared(s engine.SamplerSpec) bool {
	switch s.Name {
	case engine.SamplerRankAware, engine.SamplerSeqlenBalanced, engine.SamplerTokenBudget:
		return true
	}
	return false
}

// Batch is one micro-batch.
type Batch struct {
	// Position is where the micro-batch is in the stream, with its
	// partition's generation when the controller names one.
	Position
	// Partition is Config.Partitions[Step].
	Partition string
	// Meta describes the rows (put outputs back with it).
	Meta *engine.BatchMeta
	// Data holds the columns. They may be views into shared memory that
	// the loader releases when the loop body returns: use Data.Clone to
	// keep them longer.
	Data *engine.Batch
}

// Loader yields the micro-batches of one rank. A Loader runs one iteration
// at a time (All refuses a second concurrent one); its methods are safe
// for concurrent use.
type Loader struct {
	c   *client.Client
	cfg Config
	// spec is what fetches name; private is true for samplers that hand a
	// fetch to one rank (their unyielded rows are given back).
	spec    engine.SamplerSpec
	private bool

	running atomic.Bool
	mu      sync.Mutex
	// next is the first position not yet yielded, with the generation of
	// the partition at next.Step that the loader read (see fetch).
	next Position
	err  error // what the last iteration could not yield (Err)

	// The give-back's retries: tries, each bounded by giveBackTimeout,
	// with a backoff from giveBackBackoff doubling up to 2 s between them.
	giveBackTries   int
	giveBackTimeout time.Duration
	giveBackBackoff time.Duration
}

// New returns a loader reading through c. The configuration is checked
// ([Config.Validate]).
func New(c *client.Client, cfg Config) (*Loader, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: no client", errConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	cfg.Partitions, cfg.Fields = slices.Clone(cfg.Partitions), slices.Clone(cfg.Fields)
	spec := cfg.sampler()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := &Loader{c: c, cfg: cfg, spec: spec, private: !shared(spec), next: cfg.Start,
		giveBackTries: giveBackTries, giveBackTimeout: giveBackTimeout, giveBackBackoff: giveBackBackoff}
	if spec.Name != engine.SamplerSeqlenBalanced && spec.Name != engine.SamplerTokenBudget {
		l.spec.DPSize = 0 // the others take none
	}
	return l, nil
}

// Next returns the position of the first micro-batch not yet yielded: a
// rank that stops (or fails) and starts again passes it as Config.Start.
// Once the loader has had a micro-batch of the partition at Step, the
// position names its generation (Position.Gen, GenOf and Cluster).
func (l *Loader) Next() Position {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// Err returns what the last iteration ended with and could not yield, as
// the loop had ended already (a break, a panic): the give-back of rows
// fetched ahead and never yielded that failed after its retries (the
// controller was unreachable). Those rows stay consumed for the task: no
// consumer gets them unless they are given back or the task's consumption
// is reset. The error names the partitions; it is also logged
// (Config.Logger). nil once an iteration ended without one; an iteration
// that starts clears it.
func (l *Loader) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// errRunning reports a second concurrent iteration.
var errRunning = errors.New("stream: the loader is already iterating")

// item is a fetched micro-batch on its way to the loop, or an error that
// ends the iteration; end marks the stream's end.
type item struct {
	b   *Batch
	key string
	err error
	end bool
	pos Position // with end: past the last partition
}

// All returns the iterator over this rank's micro-batches, from Next on:
//
//	for b, err := range loader.All(ctx) {
//		if err != nil {
//			return err
//		}
//		train(b.Data)
//	}
//
// In finite mode the iteration ends once the last partition has nothing
// left for this rank (its producer marked it done with
// [client.Client.MarkDone] and the rank's group drained it). An error ends
// it after being yielded; a canceled ctx ends it with ctx's error.
// Breaking out of the loop stops the prefetcher and gives back what it
// fetched and never yielded (see the package documentation).
func (l *Loader) All(ctx context.Context) iter.Seq2[*Batch, error] {
	return func(yield func(*Batch, error) bool) {
		if !l.running.CompareAndSwap(false, true) {
			yield(nil, errRunning)
			return
		}
		defer l.running.Store(false)
		ctx, cancel := context.WithCancel(ctx)
		l.mu.Lock()
		l.err = nil
		l.mu.Unlock()
		l.mu.Lock()
		pos := l.next
		l.mu.Unlock()
		var src source
		if l.cfg.Prefetch == 0 {
			src = &direct{l: l, pos: pos}
		} else {
			src = l.prefetch(ctx, pos)
		}
		var lost error // a give-back of a batch not yielded after a cancel that failed
		defer func() {
			cancel()
			if err := errors.Join(lost, src.stop(l)); err != nil {
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
			}
		}()
		for {
			it := src.next(ctx)
			if !it.end && it.err == nil && ctx.Err() != nil {
				// A batch fetched before the cancel (the prefetcher's
				// queue and ctx were both ready): a canceled ctx ends the
				// iteration, and the batch goes back as a break gives
				// back what was never yielded.
				lost = l.dispose(it)
				yield(nil, fmt.Errorf("stream: %w", context.Cause(ctx)))
				return
			}
			if it.end {
				l.mu.Lock()
				l.next = it.pos
				l.mu.Unlock()
				return
			}
			if it.err != nil {
				if ctx.Err() != nil {
					it.err = fmt.Errorf("stream: %w", context.Cause(ctx))
				}
				yield(nil, it.err)
				return
			}
			if ok, err := l.keep(ctx, it); err != nil {
				yield(nil, err)
				return
			} else if !ok {
				continue
			}
			l.mu.Lock()
			l.next = it.b.Position // with its partition's generation
			l.next.Index++
			l.mu.Unlock()
			if !yieldBatch(yield, it.b) {
				return
			}
		}
	}
}

// keep acknowledges the held fetch of a private sampler's micro-batch as
// the loop takes it: its rows are consumed for good. It reports false
// when the controller gave them back meanwhile (the hold outlived its
// TTL: another consumer may have them), and the batch is dropped. A
// failed acknowledgment gives the rows back and ends the iteration.
func (l *Loader) keep(ctx context.Context, it item) (bool, error) {
	if !l.private || it.key == "" {
		return true, nil
	}
	err := l.c.Acknowledge(ctx, it.b.Partition, l.cfg.Task, it.key)
	switch {
	case err == nil, errors.Is(err, engine.ErrNotSupported):
		// A controller from before held fetches held nothing.
		return true, nil
	case errors.Is(err, engine.ErrNotFound):
		l.cfg.Logger.Warn("stream: a prefetched micro-batch was given back by the controller before the loop took it (its hold outlived the controller's held-fetch TTL): dropped",
			"partition", it.b.Partition, "task", l.cfg.Task, "rows", it.b.Meta.Len())
		it.b.Data.Release()
		return false, nil
	}
	err = fmt.Errorf("stream: acknowledge %d rows of %q for task %q: %w", it.b.Meta.Len(), it.b.Partition, l.cfg.Task, err)
	if derr := l.dispose(it); derr != nil {
		err = fmt.Errorf("%w (and %w)", err, derr)
	}
	return false, err
}

// yieldBatch hands b to the loop's body and releases its data after,
// however the body ends: a panic the caller recovers from leaves no lease
// behind.
func yieldBatch(yield func(*Batch, error) bool, b *Batch) bool {
	defer b.Data.Release()
	return yield(b, nil)
}

// source hands the iterator its items.
type source interface {
	next(ctx context.Context) item
	// stop ends the source (its context is canceled) and disposes of what
	// it still holds; it returns the give-backs that failed.
	stop(l *Loader) error
}

// direct fetches each micro-batch when the loop asks for it.
type direct struct {
	l   *Loader
	pos Position
}

func (d *direct) next(ctx context.Context) item {
	return d.l.fetch(ctx, &d.pos)
}

func (d *direct) stop(*Loader) error { return nil }

// prefetcher fetches ahead on its own goroutine.
type prefetcher struct {
	// ch holds the items fetched and not yet taken; each holds one of the
	// Prefetch slots, so a send on ch never blocks.
	ch    chan item
	slots chan struct{} // a value per item fetched (or being fetched) and not taken
	done  chan struct{} // closed when the goroutine exited
}

func (l *Loader) prefetch(ctx context.Context, pos Position) *prefetcher {
	p := &prefetcher{ch: make(chan item, l.cfg.Prefetch), slots: make(chan struct{}, l.cfg.Prefetch), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			it := l.fetch(ctx, &pos)
			p.ch <- it
			if it.end || it.err != nil {
				return
			}
		}
	}()
	return p
}

func (p *prefetcher) next(ctx context.Context) item {
	select {
	case it := <-p.ch:
		<-p.slots // the prefetcher may fetch another while the body runs
		return it
	case <-ctx.Done():
		return item{err: ctx.Err()}
	}
}

func (p *prefetcher) stop(l *Loader) error {
	<-p.done
	var items []item
	for {
		select {
		case it := <-p.ch:
			items = append(items, it)
			continue
		default:
		}
		break
	}
	// Given back side by side: each may retry for a while.
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { errs[i] = l.dispose(it) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// The give-back's retries (see giveBack).
const (
	giveBackTries   = 4
	giveBackTimeout = 10 * time.Second
	giveBackBackoff = 100 * time.Millisecond
	maxBackoff      = 2 * time.Second
)

// dispose releases an item nobody will yield and gives back its rows: a
// private sampler's to the task; a shared sampler's batch stays kept for
// the group, and its fetch is given back once, best effort (see
// giveBackKept).
func (l *Loader) dispose(it item) error {
	if it.b == nil {
		return nil
	}
	it.b.Data.Release()
	switch {
	case it.key == "":
	case l.private:
		return l.giveBack(it.b.Partition, it.key, it.b.Meta.Len())
	default:
		l.giveBackKept(it.b.Partition, it.key)
	}
	return nil
}

// giveBackKept gives back a shared sampler's fetch named key, once: the
// controller keeps the batch for the group (a rank restarting at Next
// gets it), and lets it go back to the task for the other groups once
// every fetch of it was given back and nobody fetched it for its
// kept-batch TTL. A failure is logged and changes nothing else: the
// batch stays kept, as before the give-back, and the group's next fetch
// of its index gets it.
func (l *Loader) giveBackKept(partition, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), l.giveBackTimeout)
	defer cancel()
	if err := l.c.GiveBack(ctx, partition, l.cfg.Task, key); err != nil && !errors.Is(err, engine.ErrNotSupported) {
		l.cfg.Logger.Warn("stream: a prefetched micro-batch of a shared sampler could not be given back: it stays kept for the DP group until the group fetches it",
			"partition", partition, "task", l.cfg.Task, "dp_rank", l.cfg.DPRank, "err", err)
	}
}

// giveBack returns the rows of the fetch named key (n of them, -1 when
// unknown) to the task. A give-back that fails is tried again, up to
// giveBackTries times, each bounded by giveBackTimeout (the client itself
// repeats it over new connections meanwhile), with a growing pause
// between the tries; one that fails for good is logged and returned: its
// rows stay consumed for the task, and nobody else would know.
func (l *Loader) giveBack(partition, key string, n int) error {
	backoff := l.giveBackBackoff
	var err error
	tries := 0
	for tries < max(l.giveBackTries, 1) {
		tries++
		ctx, cancel := context.WithTimeout(context.Background(), l.giveBackTimeout)
		err = l.c.GiveBack(ctx, partition, l.cfg.Task, key)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, engine.ErrInvalid) || errors.Is(err, engine.ErrNotSupported) {
			break // asking again gets the same answer
		}
		if tries < l.giveBackTries {
			time.Sleep(backoff)
			backoff = min(2*backoff, maxBackoff)
		}
	}
	rows := "its rows"
	if n >= 0 {
		rows = fmt.Sprintf("its %d rows", n)
	}
	err = fmt.Errorf("stream: give back a fetch from %q for task %q (%s stay consumed) after %d tries: %w",
		partition, l.cfg.Task, rows, tries, err)
	l.cfg.Logger.Error("stream: rows fetched and never yielded could not be given back",
		"partition", partition, "task", l.cfg.Task, "rows", n, "tries", tries, "err", err)
	return err
}

// fetch gets the micro-batch at *pos (moving to the next partition when
// one is drained) and advances *pos past it. pos.Gen is the generation of
// the partition at pos.Step the loader has read (0: none yet; pos.GenOf
// names that partition), with the cluster whose controller numbered it
// (pos.Cluster): fetches name the generation and cluster, so that a
// partition cleared under the loader (a DP peer that finished first
// cleared it), perhaps made again, ends it as a drained one does
// rather than keep the loader waiting or hand it the new partition's
// rows. They are set from the first micro-batch of a partition (or come
// with Config.Start) and dropped with each new partition.
func (l *Loader) fetch(ctx context.Context, pos *Position) item {
	// reread is set once a read of fetched rows failed: the fetch is asked
	// again, naming the rows' generation, once.
	reread := false
	for {
		if pos.Step >= len(l.cfg.Partitions) {
			return item{end: true, pos: *pos}
		}
		part := l.cfg.Partitions[pos.Step]
		req := client.MetaRequest{
			Mode: client.Fetch, Partition: part, Task: l.cfg.Task, Fields: l.cfg.Fields,
			BatchSize: l.cfg.MicroBatchSize, TokenBudget: l.cfg.TokenBudget, Sampler: l.spec, Wait: true,
			EndWhenConsumed: l.cfg.EndWhenConsumed, PartitionMustExist: l.cfg.PartitionMustExist,
			PartitionGen: pos.Gen, Cluster: pos.Cluster,
		}
		// Keyed, to be given back if never yielded (dispose).
		req.Key = newKey()
		if !l.private {
			req.Options = engine.SamplingOptions{HasRank: true, DPRank: l.cfg.DPRank, BatchIndex: pos.Index}
		} else {
			// Held until the loop takes the batch (keep): till then the
			// task's other consumers wait rather than end without the
			// rows, should this loader give them back.
			req.Hold = true
		}
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if l.cfg.EndWhenConsumed {
			fctx, cancel = context.WithTimeout(ctx, l.cfg.PollInterval)
		}
		m, err := l.c.GetMeta(fctx, req)
		cancel()
		if l.cfg.EndWhenConsumed && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// A private fetch may have taken rows as its wait ended (a
			// reply that came after the deadline), which its client gives
			// back only in the background: they would count as consumed
			// below, and come back after the partition ended. Give them
			// back now, tried again as every give-back is (a moment
			// without the controller is no reason to end).
			if l.private {
				if gerr := l.giveBack(part, req.Key, -1); gerr != nil {
					return item{err: fmt.Errorf("stream: give back a timed-out fetch from %q for task %q: %w", part, l.cfg.Task, gerr)}
				}
			}
			// No rows for a while: has the task consumed them all?
			all, cerr := l.c.CheckConsumption(ctx, part, l.cfg.Task)
			if cerr != nil {
				return item{err: fmt.Errorf("stream: consumption of %q for task %q: %w", part, l.cfg.Task, cerr)}
			}
			if !all {
				continue
			}
			// Between the wait and the check, a DP peer of this rank may
			// have fetched this batch index (a shared sampler keeps it
			// for the group), or a fetch of this rank's own may have taken
			// it with a reply that came after the deadline (a shared
			// sampler's: a private one's was given back above): those
			// rows count as consumed, yet they are this rank's next
			// micro-batch. Ask once more, without waiting: rows mean the
			// batch, none the end.
			req.Wait = false
			req.Key = newKey()
			m, err = l.c.GetMeta(ctx, req)
			if err == nil && m.Empty() {
				err = fmt.Errorf("partition %q consumed: %w", part, engine.ErrDone)
			}
		}
		switch {
		case errors.Is(err, engine.ErrDone):
			pos.Gen, pos.GenOf, pos.Cluster, reread = 0, "", "", false
			if pos.Step == len(l.cfg.Partitions)-1 && l.cfg.Continuous {
				// (Following the partition, whichever is made next.)
				select {
				case <-time.After(l.cfg.PollInterval):
					continue
				case <-ctx.Done():
					return item{err: ctx.Err()}
				}
			}
			*pos = Position{Step: pos.Step + 1}
			continue
		case err != nil:
			// A private fetch that failed (canceled, say) may have taken
			// rows its client gives back only in the background: give
			// them back before the iteration ends, or a loader started
			// at Next could find the partition consumed without them.
			err = fmt.Errorf("stream: fetch from %q for task %q: %w", part, l.cfg.Task, err)
			if l.private {
				if gerr := l.giveBack(part, req.Key, -1); gerr != nil {
					err = fmt.Errorf("%w (and %w)", err, gerr)
				}
			}
			return item{err: err}
		case m.Empty():
			continue // a wait that ended without rows: wait again
		}
		data, err := l.c.Get(ctx, m)
		if err != nil {
			err = fmt.Errorf("stream: read %d rows of %q for task %q: %w", m.Len(), part, l.cfg.Task, err)
			if l.private {
				if gerr := l.giveBack(part, req.Key, m.Len()); gerr != nil {
					return item{err: fmt.Errorf("%w (and %w)", err, gerr)}
				}
			}
			if !reread && m.PartitionGen != 0 && ctx.Err() == nil {
				// A DP peer may have cleared the partition between the
				// fetch and the read: the fetch, asked again naming the
				// rows' generation, says so (the partition ends as a
				// drained one does), or the read fails again.
				reread = true
				if pos.Gen == 0 {
					pos.Gen, pos.GenOf, pos.Cluster = m.PartitionGen, part, m.Cluster
				}
				continue
			}
			return item{err: err}
		}
		reread = false
		if pos.Gen == 0 && m.PartitionGen != 0 {
			pos.Gen, pos.GenOf, pos.Cluster = m.PartitionGen, part, m.Cluster
		}
		b := &Batch{Position: *pos, Partition: part, Meta: m, Data: data}
		pos.Index++
		return item{b: b, key: req.Key}
	}
}

// newKey returns a fetch key: 16 random bytes.
func newKey() string {
	var k [16]byte
	rand.Read(k[:])
	return string(k[:])
}
