package engine

// The requests and replies of the metadata service, shared by the
// controller, which serves them, and its clients, which call it in process
// or over the wire.

import "time"

// FetchRequest asks for a batch of rows that are produced for every named
// field and not yet consumed by the task.
type FetchRequest struct {
	Partition string
	Task      string
	Fields    []string
	// BatchSize is the number of rows to take (per DP rank for the
	// seqlen-balanced and token-budget samplers). With TokenBudget it may
	// be 0: no row limit.
	BatchSize int
	// TokenBudget, when positive, bounds a batch by the sum of its rows'
	// "total_lengths" tags instead of (or as well as) a row count; only
	// the token-budget sampler takes it (upstream's get_meta(token_budget=N)).
	TokenBudget int64
	Options     SamplingOptions
	// Sampler chooses a built-in sampler for this fetch; the zero value is
	// the controller's configured sampler. Fetches naming the same spec
	// share one sampler (and its cache of batches per DP rank).
	Sampler SamplerSpec
	// Wait blocks until enough rows are ready (or the sampler has a cached
	// answer), the context ends or the controller closes. Without Wait the
	// fetch returns an empty meta at once when data is insufficient.
	Wait bool
	// Key, when not empty, names this fetch (16 random bytes make a good
	// one): a fetch repeated with the same key returns the rows the first
	// one took instead of taking more, and an unconsume with the key gives
	// them back (see the controller's Fetch and Unconsume). Remote clients
	// set it on every fetch, so that one lost to a broken connection can
	// be asked again, and one its caller abandoned can be undone.
	Key string
	// EndWhenConsumed says the rows the partition has now, pre-allocated
	// ones included, are all it will have (a loader that ends once they
	// are consumed): once every one is produced the fetch is final, as for
	// a partition marked done, so the sampler may return a short last
	// batch and a fetch that gets nothing is ErrDone.
	EndWhenConsumed bool
	// Hold (with a Key) holds the rows the fetch consumes for its caller
	// until it acknowledges them (keeps them for good) or gives them back:
	// meanwhile the task's other fetches are not told ErrDone, since the
	// rows may still come back (a loader that fetches ahead and may drop
	// what it fetched). Rows of a batch kept for a DP group are not held
	// (the group's peers get them anyway). See the controller's
	// Acknowledge.
	Hold bool
	// HoldGroup, with Hold, names the consumer the hold belongs to when
	// several fetching processes stand for one (a DataLoader's workers):
	// a fetch of the task in the same group is told ErrDone though the
	// group's own holds are unsettled (the main process that settles them
	// may be waiting on that fetch's caller), unless one is held for a
	// holder known to be gone (see HolderPID, HolderClient): a member
	// killed never settles it, and it comes back. Fetches outside the
	// group still wait for them. At most 64 bytes.
	HoldGroup string
	// PartitionMustExist makes a fetch of a partition the controller does
	// not have (never made, or cleared) fail at once, wait or not, with
	// an error wrapping ErrInvalid that names it, instead of returning an
	// empty meta or waiting for a producer to make it (a misspelled
	// partition id would wait forever). Only the time of the request
	// counts: once the fetch found the partition, one cleared while it
	// waits is waited for again as without it (until the wait ends; the
	// request asked again then fails).
	PartitionMustExist bool
	// PartitionGen, when not 0, is the generation of the partition the
	// caller has been reading ([BatchMeta.PartitionGen] of an earlier
	// fetch): a partition of another generation (cleared and made again)
	// or none (cleared) fails the fetch at once, wait or not, with an
	// error wrapping ErrDone that names the partition and the generation,
	// and a fetch waiting when its partition is cleared ends so too. A
	// loader ends with the partition, as with one done, instead of
	// waiting for good or reading the rows of the partition made again.
	PartitionGen uint64
	// Cluster, with PartitionGen, is the cluster whose controller gave
	// the generation ([BatchMeta.Cluster] of the same meta): a controller
	// of another cluster (started anew without that cluster's state, its
	// partitions numbered anew, so a generation may match by chance)
	// fails the fetch as for a partition cleared. "": not checked.
	Cluster string
	// HolderPID, with Hold, is the process on the controller's host the
	// rows are held for (0: unknown). Once it has exited, a fetch waiting
	// at the end of a done partition for those rows has them given back
	// at once rather than after the held-fetch TTL. A server sets it from
	// a unix socket peer's credentials.
	HolderPID int32
	// HolderClient, with Hold, names the client the rows are held for,
	// on any host (the client_id of its HELLO; "": unknown). Once every
	// connection of that client was closed by the client and it did not
	// connect again within the controller's grace, a fetch waiting at the
	// end of a done partition for those rows has them given back rather
	// than after the held-fetch TTL. A server sets it from the peer's
	// HELLO.
	HolderClient string
}

// CommitRequest flips the production bits of cells whose bytes are
// complete in storage.
type CommitRequest struct {
	Partition string
	Indexes   []uint64
	Fields    []CommitField
	// Cluster, when not "", is the cluster whose storage units the cells
	// were written to, as the client learned them: unit ids name units
	// within one cluster only (a controller that starts without the state
	// of the last one hands them out again), so a controller of another
	// cluster refuses the commit with [ErrLost] and changes nothing.
	Cluster string
}

// CommitField reports the cells of one field that a storage unit has
// committed for the rows of a [CommitRequest].
type CommitField struct {
	Name  string
	DType DType
	// Kind is Dense (every row has Shape), Ragged (row i has Shapes[i]) or
	// Opaque (byte strings; no shape).
	Kind   Kind
	Shape  Shape
	Shapes []Shape
	// Locs says where each row's bytes live; nil records the cells as
	// produced without a location (metadata-only use). A location of a
	// dense or ragged row is exactly as long as its shape needs
	// (product(dims) × the dtype's size): the controller refuses others.
	Locs []CellLoc
	// Runs, instead of Locs, says the same in runs of cells (see
	// [CellRun]): the cells of the runs, in order, are the rows'.
	// A column slice one put wrote is a single run, which is cheaper to
	// send and record than its cells one by one.
	Runs []CellRun
}

// KeysCommit is the controller's whole share of a KV put: the cells a
// storage unit already holds for some keys, committed in one step that
// creates the keys it needs to. Row i of every field belongs to Keys[i].
type KeysCommit struct {
	Partition string
	Keys      []string
	// Fields may be empty: a put of tags only.
	Fields []CommitField
	// Tags, when not nil, holds one map per key, merged into its tags.
	Tags []Tags
	// Cluster is as in [CommitRequest].
	Cluster string
}

// KeysCommitted is what a [KeysCommit] did.
type KeysCommitted struct {
	// Replaced are the cells the commit overwrote; their storage can be
	// freed.
	Replaced []CellLoc
	// Tags are the keys' tags after the merge, one map per key.
	Tags []Tags
	// Fields names the fields every key holds after the commit, sorted.
	Fields []string
}

// KeyInfo is one key of a partition with its row and tags.
type KeyInfo struct {
	Key   string
	Index uint64
	Tags  Tags
}

// TagSwap is an atomic read-modify-write of one tag of one key (see the
// controller's CompareAndSetTag). nil stands for "absent" on both sides:
// Old nil requires the tag to be absent (a tag holding null counts as
// absent), New nil deletes it.
type TagSwap struct {
	Partition string
	Key       string
	Name      string
	Old, New  any
}

// TagSwapped is what a [TagSwap] found and did.
type TagSwapped struct {
	// Swapped reports that the tag held Old and now holds New.
	Swapped bool
	// Current is the tag's value after the call: New when swapped, else
	// the value that did not match (nil: absent).
	Current any
}

// ChangesRequest asks for the keys of a partition that changed after a
// cursor (see the controller's KeyChanges).
type ChangesRequest struct {
	Partition string
	// Cursor is a previous answer's, or nil to start from the beginning.
	Cursor []byte
	// Limit bounds the changes of one answer (0: the server's page size).
	Limit int
	// Wait blocks until there is a change after Cursor (or the context
	// ends); without it an answer with no changes comes at once.
	Wait bool
}

// KeyChange is a key that changed after a cursor: as it is now, or
// cleared.
type KeyChange struct {
	Key     string
	Index   uint64 // its row; 0 when cleared
	Tags    Tags   // its tags now; nil when cleared
	Cleared bool
}

// KeyChanges is one answer to a [ChangesRequest].
type KeyChanges struct {
	// Changes lists the keys changed after the cursor, in the order of
	// their last change, each once.
	Changes []KeyChange
	// Cursor is where the next request starts.
	Cursor []byte
	// Reset says that the changes since the cursor cannot be told one by
	// one (the partition was cleared or made anew, the cursor is another
	// controller's, or more keys were cleared since than the controller
	// remembers): Changes starts over with every key the partition
	// holds, and a key the caller knows that is not among them (on this
	// answer or those that continue it) is gone.
	Reset bool
	// More says that more changes are ready: asking again with Cursor
	// returns at once.
	More bool
}

// ProductionStatus is, for every row of a partition (pre-allocated rows
// included) in index order, whether each named field is produced.
type ProductionStatus struct {
	Indexes  []uint64
	Fields   []string
	Produced [][]bool // [row][field]
}

// ConsumptionStatus is, for every row of a partition (pre-allocated rows
// included) in index order, whether a task has consumed it.
type ConsumptionStatus struct {
	Indexes  []uint64
	Consumed []bool
	// Held lists, in index order, the consumed rows that held fetches
	// hold for their callers (see [FetchRequest.Hold]): they may still
	// come back, so the task has not consumed everything while any are.
	Held []uint64
}

// PartitionStats summarizes a partition.
type PartitionStats struct {
	Partition   string
	Created     time.Time
	Rows        int // active rows
	Reserved    int // pre-allocated rows not yet written
	Keys        int
	Done        bool    // the producer marked the partition done (MarkDone)
	Produced    int     // rows with at least one produced field
	Progress    float64 // produced / (rows + reserved)
	Fields      []FieldStats
	Tasks       []TaskStats // the tasks that consumed rows of it, by name
	IndexesUse  int         // global: indexes allocated across all partitions
	IndexesFree int         // global: released indexes waiting for reuse
}

// FieldStats describes one field of a partition.
type FieldStats struct {
	Name     string
	DType    DType
	Kind     Kind
	Shape    Shape // dense fields
	Produced int
}

// TaskStats is one task's progress in a partition.
type TaskStats struct {
	Task     string
	Consumed int
	Progress float64 // consumed / rows
	// Held counts the consumed rows held fetches hold for their callers,
	// not settled yet (see [FetchRequest.Hold]): they may still come back.
	Held int
}

// UnitInfo describes a registered storage unit as the controller last
// heard of it.
type UnitInfo struct {
	ID UnitID
	// Incarnation is drawn at random each time a unit process starts; the
	// controller binds ID to one incarnation for good, so a unit that comes
	// back with another is a new unit under a new id.
	Incarnation uint64
	Host        string   // host identity (Linux boot id) of the unit's machine
	Addrs       []string // "tcp://host:port", "unix:///path"
	Name        string
	// Capacity, Used (bytes), Segments, PageSize and HugePages are the
	// unit's last reported figures.
	Capacity, Used, Segments, PageSize int64
	HugePages                          bool
	// LastHeartbeat is when the unit last registered or sent a heartbeat.
	LastHeartbeat time.Time
	// Alive reports a heartbeat within the registry's timeout.
	Alive bool
	// Draining reports a unit taken out of service: clients place no new
	// cells on it, and a mover relocates those it holds (see the
	// controller's DrainUnit). It stays registered and readable.
	Draining bool
}

// UnitCell is one cell located on a storage unit: field Field of row
// Index of Partition, at Loc (see the controller's UnitCells).
type UnitCell struct {
	Partition string
	Index     uint64
	Field     string
	Loc       CellLoc
}

// CellMove relocates one cell whose bytes were copied elsewhere: it takes
// location To if it is still at From (see the controller's MoveCells).
type CellMove struct {
	Index    uint64
	Field    string
	From, To CellLoc
}
