package controller

// Durability: with Config.Dir set, every change to the controller's state
// is recorded in its journal (package journal) while the lock that guards
// the change is held, so records follow the order of the changes they
// describe; the server answers only once the records a request made (or
// read) are durable. A restart reads the newest snapshot and replays the
// records after it. A goroutine takes a snapshot whenever the log written
// since the last one outgrows the state (and at least Config.SnapshotBytes),
// so the log stays about as large as the state and a restart replays at
// most that much. durability.md describes the files.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/controller/journal"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// DefaultSnapshotBytes is Config.SnapshotBytes' default.
const DefaultSnapshotBytes = 64 << 20

// newClusterID returns a random cluster id.
func newClusterID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newNonce draws a start's nonce (never 0, which names no start).
func newNonce() uint64 {
	for {
		var b [8]byte
		rand.Read(b[:])
		if n := binary.LittleEndian.Uint64(b[:]); n != 0 {
			return n
		}
	}
}

// log records ops as one record, if the controller is durable. The caller
// holds the lock that guards the change the ops describe.
func (c *Controller) log(ops ...*wirepb.LogOp) uint64 {
	if c.j == nil || c.replaying {
		return 0
	}
	b, err := proto.Marshal(&wirepb.LogRecord{Ops: ops})
	if err != nil {
		// Every string in an op came through the wire (valid UTF-8) or was
		// checked by the controller; failing here is a bug.
		panic(fmt.Sprintf("controller: encode log record: %v", err))
	}
	return c.j.Append(b)
}

// noteRemoved raises c.removed to idx.
func (c *Controller) noteRemoved(idx uint64) {
	for {
		cur := c.removed.Load()
		if idx <= cur || c.removed.CompareAndSwap(cur, idx) {
			return
		}
	}
}

// WaitRead waits until what a read of keys of partition saw is durable:
// the last records that changed those keys' rows, and, for a key it found
// absent, the last that took keys out of the partition or removed
// partitions. Records about other keys need not be, so a read does not
// wait for the fsync of puts it did not see. Call it after the read: it
// looks at the keys as they are then, which is never less than what the
// read saw (a row's records only grow; a key cleared since counts the
// clear). A change that touched only keys of one partition and saw
// nothing but them and their fields (CommitKeys) waits the same way after
// it returns: its own record is the last that changed them, or a later
// one is, and every record it saw came before its own. So a put does not
// wait for the next group's fsync because other puts were appended after
// it. Errors as for [Controller.WaitDurable].
func (c *Controller) WaitRead(ctx context.Context, partition string, keys []string) error {
	if err := c.closed(); err != nil {
		return err
	}
	if c.j == nil {
		return nil
	}
	return c.j.Wait(ctx, c.readIndex(partition, keys))
}

// ReadIndex is the log record [Controller.WaitRead] of keys of partition
// would wait for now (0 without a log): a caller that serves several
// changes before it answers any waits once, with [Controller.WaitIndex],
// for the largest.
func (c *Controller) ReadIndex(partition string, keys []string) uint64 {
	if c.j == nil {
		return 0
	}
	return c.readIndex(partition, keys)
}

// WaitIndex waits until log record index is durable (at once without a
// log, or for 0). Errors as for [Controller.WaitDurable].
func (c *Controller) WaitIndex(ctx context.Context, index uint64) error {
	if err := c.closed(); err != nil {
		return err
	}
	if c.j == nil || index == 0 {
		return nil
	}
	return c.j.Wait(ctx, index)
}

// readIndex is the log index a read of keys of partition waits for.
func (c *Controller) readIndex(partition string, keys []string) uint64 {
	var idx uint64
	if p, _ := c.lock(partition); p != nil { // closed: the waits say so
		for _, k := range keys {
			if r, ok := p.keys[k]; ok {
				idx = max(idx, r.logged)
			} else {
				idx = max(idx, p.removed)
			}
		}
		p.mu.Unlock()
	}
	// After the lookup: a partition cleared (or replaced) since the read
	// took its keys' records with it, and noted its own here before it
	// was dropped.
	return max(idx, c.removed.Load())
}

// logging reports whether changes are recorded: callers skip building ops
// when they are not.
func (c *Controller) logging() bool { return c.j != nil && !c.replaying }

// failed reports whether the controller's journal stopped: it
// acknowledges nothing more.
func (c *Controller) failed() bool { return c.j != nil && c.j.Err() != nil }

// Durable reports whether the controller records its changes in a journal.
func (c *Controller) Durable() bool { return c.j != nil }

// WaitDurable waits until every change made so far (and so every change a
// caller has seen) is durable. An in-memory controller returns at once.
// Errors: the context's, one wrapping [journal.ErrFailed] when the log
// cannot be written (the controller must then stop answering), or, after
// Close, in memory too, one wrapping [engine.ErrClosed].
func (c *Controller) WaitDurable(ctx context.Context) error {
	if err := c.closed(); err != nil {
		return err
	}
	if c.j == nil {
		return nil
	}
	return c.j.Wait(ctx, c.j.Last())
}

// ClusterInfo describes the controller's identity and its log.
type ClusterInfo struct {
	ClusterID string
	Epoch     uint64
	Durable   bool
	Fsync     string
	// LogIndex is the last record logged, SnapshotIndex the last record
	// the newest snapshot holds, LogBytes the bytes logged since.
	LogIndex, SnapshotIndex uint64
	LogBytes                int64
}

// Info returns the controller's identity and the state of its log.
func (c *Controller) Info() ClusterInfo {
	ci := ClusterInfo{ClusterID: c.cluster, Epoch: c.epoch}
	if c.j != nil {
		ci.Durable, ci.Fsync = true, c.cfg.Fsync.String()
		ci.LogIndex = c.j.Last()
		if s := c.j.Snapshots(); len(s) > 0 {
			ci.SnapshotIndex = s[0].Index
		}
		ci.LogBytes = c.j.SinceSnapshot()
	}
	return ci
}

// openJournal opens the journal in c.cfg.Dir, recovers the state it holds
// and records this start's epoch.
func (c *Controller) openJournal() error {
	j, err := journal.Open(journal.Config{Dir: c.cfg.Dir, Fsync: c.cfg.Fsync, OnWrite: c.cfg.OnJournalWrite, Logf: c.cfg.Logf})
	if err != nil {
		return err
	}
	c.j = j
	abandoned, err := c.recover()
	if err == nil && abandoned {
		// Settle it before any record follows it: replay from this
		// snapshot on never meets it again.
		if err = c.snapshot(); err != nil {
			err = fmt.Errorf("snapshot the state before an unfinished checkpoint load: %w", err)
		}
	}
	if err != nil {
		j.Close()
		c.j = nil
		return fmt.Errorf("recover controller state from %s: %w", c.cfg.Dir, err)
	}
	c.epoch++
	op := &wirepb.ClusterOp{Epoch: c.epoch, Nonce: newNonce()}
	if c.cluster == "" {
		c.cluster = newClusterID()
		op.ClusterId = c.cluster
	}
	c.noteStart(op.Nonce, c.log(&wirepb.LogOp{Op: &wirepb.LogOp_Cluster{Cluster: op}}))
	if err := c.WaitDurable(context.Background()); err != nil {
		j.Close()
		c.j = nil
		return err
	}
	c.units.recovered(time.Now())
	c.snapDone = make(chan struct{})
	c.snapStop = make(chan struct{})
	go c.snapshotter()
	return nil
}

// recover loads the newest readable snapshot and replays the log after it.
// A snapshot whose bytes are damaged is set aside (and Config.Logf told),
// and the one before it (with every record since) used instead; if the
// start fails all the same, its error names the snapshots set aside. Any
// other failure — a file that cannot be opened, a state this
// configuration cannot take (another sampler's) — fails the start and
// sets nothing aside: it is not the file's fault. abandoned reports a checkpoint load that did not finish
// (see replaced), which the caller settles with a snapshot.
func (c *Controller) recover() (abandoned bool, err error) {
	c.replaying = true
	defer func() { c.replaying = false }()
	var after uint64
	var setAside []string // this start's, with why
	defer func() {
		if err != nil && len(setAside) > 0 {
			err = fmt.Errorf("%w (snapshots set aside: %s)", err, strings.Join(setAside, "; "))
		}
	}()
	for _, s := range c.j.Snapshots() {
		ls, err := readSnapshot(s)
		if errors.Is(err, engine.ErrCorrupt) {
			// A file of another record's state (renamed, copied in) is
			// not this snapshot, damaged: its name says nothing of what
			// the log must hold.
			setAsideAs, set := badSuffix, c.j.Discard
			if errors.Is(err, errMisnamed) {
				setAsideAs, set = ".misnamed", c.j.SetAsideMisnamed
			}
			if derr := set(s); derr != nil {
				return false, errors.Join(err, derr)
			}
			setAside = append(setAside, fmt.Sprintf("renamed %s: %v", setAsideAs, err)) // names the file
			if c.cfg.Logf != nil {
				c.cfg.Logf("controller: snapshot set aside as %s%s, recovering without it: %v", filepath.Base(s.Path), setAsideAs, err)
			}
			continue
		}
		if err != nil {
			return false, err
		}
		if err := c.adopt(ls); err != nil {
			return false, fmt.Errorf("%s: %w", filepath.Base(s.Path), err)
		}
		if fi, err := os.Stat(s.Path); err == nil {
			c.lastSnapBytes.Store(fi.Size()) // the next snapshot's threshold
		}
		after = s.Index
		break
	}
	records := 0
	err = c.j.Replay(after, func(i uint64, b []byte) error {
		var rec wirepb.LogRecord
		if err := proto.Unmarshal(b, &rec); err != nil {
			return corrupt("decode: %s", err.Error())
		}
		records++
		for _, op := range rec.Ops {
			if cl := op.GetCluster(); cl != nil && cl.Replaced {
				if err := c.replaced(i); err != nil {
					return err
				}
				abandoned = true
				continue
			} else if cl != nil && cl.Nonce != 0 {
				c.noteStart(cl.Nonce, i)
			}
			if err := c.apply(op); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	c.idx.rebuild(c.usedIndexes())
	c.armKept(time.Now())
	c.armHeld(time.Now())
	return abandoned, nil
}

// replaced handles a checkpoint load's record, at index, met in replay.
// A load writes a snapshot of the state it loaded at its record and holds
// every lock until the snapshot is in place, and a load that fails after
// its record stops the journal: so records follow a load's only with its
// snapshot, from which replay starts after it. Met here, with no snapshot
// at or after it and no record after it, it is a load that did not finish
// (the process died while the snapshot was written, or the load failed):
// nobody saw its state, and the state before it stands. With a snapshot
// set aside at or after it, or records after it, the state it loaded is
// lost.
func (c *Controller) replaced(index uint64) error {
	for _, s := range c.j.SetAside() {
		if s.Index >= index {
			return corrupt("a checkpoint load replaced the state here, and the snapshot written with it is unreadable (set aside as %s)", filepath.Base(s.Path))
		}
	}
	if index != c.j.Last() {
		return corrupt("a checkpoint load replaced the state here, and records follow it without a snapshot of the state it loaded")
	}
	if c.cfg.Logf != nil {
		c.cfg.Logf("controller: log record %d: a checkpoint load that did not finish (no snapshot of the state it loaded); starting from the state before it", index)
	}
	return nil
}

// readSnapshot reads snapshot s, which must hold the state through the
// record its name gives: replay starts after that record, so a file that
// holds another record's state (renamed or copied in) would skip records,
// or apply some twice. It is damaged, as a file whose bytes are.
func readSnapshot(s journal.Snapshot) (*loadedState, error) {
	ls, err := readStateFile(s.Path)
	if err == nil && ls.head.LogIndex != s.Index {
		return nil, fmt.Errorf("%s holds the state through log record %d, its name says %d: %w", filepath.Base(s.Path), ls.head.LogIndex, s.Index, errMisnamed)
	}
	return ls, err
}

// errMisnamed is a snapshot whose file holds another record's state.
var errMisnamed = fmt.Errorf("not the snapshot its name gives: %w", engine.ErrCorrupt)

// badSuffix is what a snapshot set aside as damaged is renamed with
// (journal.Journal.Discard).
const badSuffix = ".bad"

func readStateFile(path string) (*loadedState, error) {
	f, st, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ls, err := readState(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return ls, nil
}

// adopt takes over a state read from a file (c holds nothing yet).
func (c *Controller) adopt(ls *loadedState) error {
	if ls.head.Data {
		return corrupt("a checkpoint with data is not a snapshot")
	}
	if err := c.units.restore(ls.head.NextUnitId, ls.head.Units); err != nil {
		return err
	}
	if err := c.fences.restore(ls.head.Fences); err != nil {
		return err
	}
	if len(ls.head.Sampler) > 0 {
		ss, ok := c.sampler.(engine.StatefulSampler)
		if !ok {
			return fmt.Errorf("the state was saved with a sampler that keeps state, and sampler %T keeps none (start with the sampler it was saved with): %w", c.sampler, engine.ErrInvalid)
		}
		if err := ss.LoadState(ls.head.Sampler); err != nil {
			return fmt.Errorf("sampler state (start with the sampler it was saved with): %w", err)
		}
	}
	named, err := c.checkNamed(ls.head)
	if err != nil {
		return err
	}
	c.installNamed(named, false, nil)
	if err := c.restoreMoves(ls.head); err != nil {
		return err
	}
	c.cluster, c.epoch, c.nextGen = ls.head.ClusterId, ls.head.Epoch, max(ls.head.NextGen, 1)
	c.starts = c.starts[:0]
	for _, s := range ls.head.Starts {
		c.noteStart(s.Nonce, s.Index)
	}
	c.setParts(ls.parts)
	c.idx.restore(ls.head.NextIndex, ls.head.Reusable, c.usedIndexes())
	return nil
}

// restoreMoves takes a snapshot's table of recent moves.
func (c *Controller) restoreMoves(head *wirepb.StateHeader) error {
	from, err1 := wire.AddrsFromPB(head.MovedFrom)
	to, err2 := wire.AddrsFromPB(head.MovedTo)
	if err := errors.Join(err1, err2); err != nil || len(from) != len(to) {
		return corrupt("the table of moved cells: %d from, %d to (%v)", len(from), len(to), err)
	}
	for i := range from {
		c.moves.add(from[i], to[i])
	}
	return nil
}

// usedIndexes returns every index a partition holds.
func (c *Controller) usedIndexes() []uint64 {
	var out []uint64
	for _, p := range c.parts {
		p.rows.all(func(r *row) { out = append(out, r.index) })
	}
	return out
}

// partitionOf returns the partition an op names (by id and gen) during
// replay, or nil when the op belongs to a partition cleared since (it
// reached the log after the clear, holding the old partition's lock).
func (c *Controller) partitionOf(id string, gen uint64) *partition {
	if p := c.parts[id]; p != nil && p.gen == gen {
		return p
	}
	return nil
}

// apply replays one op. It runs before the controller serves anyone, on
// one goroutine, so it takes no locks.
func (c *Controller) apply(lop *wirepb.LogOp) error {
	switch op := lop.Op.(type) {
	case *wirepb.LogOp_Cluster:
		if op.Cluster.Replaced {
			return corrupt("a checkpoint load replaced the state here") // recover's (replaced)
		}
		if op.Cluster.ClusterId != "" {
			c.cluster = op.Cluster.ClusterId
		}
		c.epoch = max(c.epoch, op.Cluster.Epoch)
	case *wirepb.LogOp_Unit:
		return c.units.apply(op.Unit)
	case *wirepb.LogOp_UnitEvicted:
		return c.units.applyEvicted(op.UnitEvicted)
	case *wirepb.LogOp_Fence:
		c.fences.raiseLocked(engine.UnitID(op.Fence.UnitId), op.Fence.Fences)
	case *wirepb.LogOp_Partition:
		o := op.Partition
		if o.Gen == 0 || c.parts[o.Partition] != nil {
			return corrupt("partition %q created twice (gen %d)", o.Partition, o.Gen)
		}
		if err := c.idx.markUsed(o.Reserved); err != nil {
			return fmt.Errorf("partition %q reserves rows: %w", o.Partition, err)
		}
		p := newPartition(o.Partition, o.Gen)
		p.created = time.UnixMilli(o.CreatedUnixMs)
		p.addRows(o.Reserved, false)
		c.putPart(p)
		c.nextGen = max(c.nextGen, o.Gen+1)
	case *wirepb.LogOp_ClearPartition:
		o := op.ClearPartition
		if p := c.partitionOf(o.Partition, o.Gen); p != nil {
			c.dropPartition(p)
		}
	default:
		return c.applyPartitionOp(lop)
	}
	return nil
}

// applyPartitionOp replays an op on one partition's rows.
func (c *Controller) applyPartitionOp(lop *wirepb.LogOp) error {
	switch op := lop.Op.(type) {
	case *wirepb.LogOp_Rows:
		o := op.Rows
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		if len(o.Keys) != 0 && (len(o.Keys) != len(o.Indexes) || len(o.Seqs) != len(o.Indexes)) {
			return corrupt("rows of partition %q: %d indexes, %d keys, %d creation numbers", o.Partition, len(o.Indexes), len(o.Keys), len(o.Seqs))
		}
		var keyed []*row
		made := make([]*row, len(o.Indexes))
		for i, gi := range o.Indexes {
			r, ok := p.rows.get(gi)
			if ok && r.active {
				return corrupt("row %d of partition %q activated twice", gi, o.Partition)
			}
			if ok {
				r.active = true
				p.reserved.Delete(gi)
			} else {
				if err := c.idx.markUsed([]uint64{gi}); err != nil {
					return fmt.Errorf("rows of partition %q: %w", o.Partition, err)
				}
				r = p.addRows([]uint64{gi}, true)[0]
			}
			made[i] = r
			if len(o.Keys) > 0 {
				r.seq = o.Seqs[i]
				p.setKey(r, o.Keys[i])
				p.keys[o.Keys[i]] = r
				p.bySeq.ReplaceOrInsert(r)
				p.keySeq = max(p.keySeq, r.seq)
				keyed = append(keyed, r)
			}
		}
		p.madeBy(made) // a RowsOp is one insert's rows, in its order
		p.feed.stamp(keyed, o.ChangeSeq)
	case *wirepb.LogOp_Commit:
		o := op.Commit
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		fields, err := wire.CommitFieldsFromPB(o.Fields, len(o.Indexes))
		if err != nil {
			return corrupt("commit to partition %q: %s", o.Partition, err.Error())
		}
		req := engine.CommitRequest{Partition: o.Partition, Indexes: o.Indexes, Fields: fields}
		rows, err := p.validateCommit(&req)
		if err != nil {
			return corrupt("commit to partition %q: %s", o.Partition, err.Error())
		}
		p.applyCommit(&req, rows)
		p.feed.stamp(rows, o.ChangeSeq)
	case *wirepb.LogOp_Tags:
		o := op.Tags
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		tags, err := wire.TagsFromPBShared(o.Tags)
		if err != nil || len(tags) != len(o.Indexes) {
			return corrupt("tags of partition %q", o.Partition)
		}
		rows, err := p.lookup(o.Indexes)
		if err != nil {
			return corrupt("tags of partition %q: %s", o.Partition, err.Error())
		}
		m := tagMerge{adopt: true}
		for i, r := range rows {
			p.setTags(r, m.merge(p.tagsOf(r), tags[i]))
		}
		p.feed.stamp(rows, o.ChangeSeq)
	case *wirepb.LogOp_RemoveTags:
		o := op.RemoveTags
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		rows, err := p.lookup(o.Indexes)
		if err != nil {
			return corrupt("tags removed in partition %q: %s", o.Partition, err.Error())
		}
		drop := nameSet(o.Names)
		for _, r := range rows {
			if after, n := tagsWithout(p.tagsOf(r), drop); n > 0 {
				p.setTags(r, after)
			}
		}
		p.feed.stamp(rows, o.ChangeSeq)
	case *wirepb.LogOp_ClearCells:
		o := op.ClearCells
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		rows, err := p.lookup(o.Indexes)
		if err != nil {
			return corrupt("cells cleared in partition %q: %s", o.Partition, err.Error())
		}
		for _, name := range o.Fields {
			f, ok := p.fields[name]
			if !ok {
				return corrupt("cells cleared in partition %q: no field %q", o.Partition, name)
			}
			for _, r := range rows {
				if p.has(r, f.slot) {
					p.clearCell(f, r)
				}
			}
		}
		p.unready(rows)
		p.feed.stamp(rows, o.ChangeSeq)
	case *wirepb.LogOp_Consume:
		o := op.Consume
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		smp, err := c.samplerForText(o.SamplerSpec)
		if err != nil {
			return corrupt("consume of partition %q: sampler spec %q: %v", o.Partition, o.SamplerSpec, err)
		}
		if js, ok := smp.(engine.JournaledSampler); ok {
			for _, e := range o.Sampler {
				if err := js.ApplyEntry(e); err != nil {
					return err
				}
			}
		}
		p.markConsumed(p.taskSlot(o.Task), o.Consumed)
		at := time.UnixMilli(o.AtUnixMs)
		refs := [3]*keptRef{}
		for i, r := range []*wirepb.KeptRef{o.Asked, o.KeptRef, o.Forgot} {
			if refs[i], err = keptRefOf(o.Task, r); err != nil {
				return fmt.Errorf("consume of partition %q: %w", o.Partition, err)
			}
		}
		asked, took, forgot := refs[0], refs[1], refs[2]
		if asked != nil {
			p.asked(asked.group, asked.batch)
		}
		if took != nil {
			took = p.took(took.group, took.batch, at, c.keptLook())
		}
		if forgot != nil {
			p.forget(*forgot)
		}
		for _, m := range o.Made {
			ref, err := keptRefOf(o.Task, m)
			if err != nil {
				return fmt.Errorf("consume of partition %q: %w", o.Partition, err)
			}
			p.madeKept(ref.group, ref.batch, at, c.keptLook())
		}
		if len(o.Key) > 0 {
			back := o.Consumed
			if o.Kept {
				back = nil // the group's (see tryFetch)
			}
			e := &fetchEntry{key: string(o.Key), task: o.Task, sampled: o.Sampled, consumed: back, at: at, kept: took}
			p.fetches.add(e)
			if o.Hold && len(back) > 0 {
				e.group = string(o.HoldGroup)
				p.hold(e, at) // armHeld restarts its TTL
			}
		}
	case *wirepb.LogOp_Ack:
		o := op.Ack
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		at := time.UnixMilli(o.AtUnixMs)
		if e := p.fetches.get(string(o.Key), at); e != nil && e.task == o.Task && !e.spent {
			p.settle(e, at)
		}
	case *wirepb.LogOp_Unconsume:
		o := op.Unconsume
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		if o.Rows {
			p.unconsumeRows(o.Task, string(o.Key), o.Indexes, time.UnixMilli(o.AtUnixMs))
			return nil
		}
		p.unconsume(o.Task, string(o.Key), o.Indexes, time.UnixMilli(o.AtUnixMs))
	case *wirepb.LogOp_ResetConsumption:
		o := op.ResetConsumption
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		at := time.UnixMilli(o.AtUnixMs)
		if o.AtUnixMs == 0 {
			at = time.Now() // a record from before it had the time: asked again, a fetch it un-held answers fetchKeyTTL from the replay
		}
		p.reset(o.Task, at)
		c.forgetTask(p.id, o.Task)
	case *wirepb.LogOp_ClearRows:
		o := op.ClearRows
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		rows := make([]*row, 0, len(o.Indexes))
		for _, gi := range o.Indexes {
			if r, ok := p.rows.get(gi); ok {
				rows = append(rows, r)
			}
		}
		p.feed.bury(p, rows, o.ChangeSeq)
		p.removeRows(rows, nil)
		c.forgetRows(p.id, o.Indexes)
		at := time.UnixMilli(o.AtUnixMs)
		if o.AtUnixMs == 0 {
			at = time.Now() // a record from before it had the time: asked again, a fetch it un-held answers fetchKeyTTL from the replay
		}
		p.forgetRows(o.Indexes, at)
		c.idx.release(o.Indexes)
	case *wirepb.LogOp_Done:
		if p := c.partitionOf(op.Done.Partition, op.Done.Gen); p != nil {
			p.done = true
		}
	case *wirepb.LogOp_Move:
		return c.applyMove(op.Move)
	case *wirepb.LogOp_Lost:
		o := op.Lost
		p := c.partitionOf(o.Partition, o.Gen)
		if p == nil {
			return nil
		}
		if len(o.Fields) != len(o.Indexes) {
			return corrupt("lost cells of partition %q: %d indexes, %d fields", o.Partition, len(o.Indexes), len(o.Fields))
		}
		for i, gi := range o.Indexes {
			r, ok := p.rows.get(gi)
			f := p.fields[o.Fields[i]]
			if ok && f != nil && p.has(r, f.slot) {
				p.rows.set(r, f.slot, lostCell(p.rows.cell(r, f.slot)))
			}
		}
	default:
		return corrupt("log op %T", lop.Op)
	}
	return nil
}

// lockAll takes every lock under which records are appended, in the
// order the rest of the controller takes them (c.mu, then partitions,
// then the registry and the fences), so that what it sees is one
// consistent state at one position of the log.
func (c *Controller) lockAll() (unlock func()) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.parts))
	for id := range c.parts {
		ids = append(ids, id)
	}
	parts := make([]*partition, 0, len(ids))
	for _, id := range ids {
		p := c.parts[id]
		p.mu.Lock()
		if p.dropped {
			// A new partition its request gave up (unlockNew), not taken
			// out yet: it never was, and no copy of the state has it.
			c.pruneLocked(p)
			p.mu.Unlock()
			continue
		}
		parts = append(parts, p)
	}
	c.units.mu.Lock()
	c.fences.mu.Lock()
	return func() {
		c.fences.mu.Unlock()
		c.units.mu.Unlock()
		for _, p := range parts {
			p.mu.Unlock()
		}
		c.mu.Unlock()
	}
}

// snapshot writes a snapshot of the state to the journal.
func (c *Controller) snapshot() error {
	unlock := c.lockAll()
	pos := c.j.Pos()
	if s := c.j.Snapshots(); len(s) > 0 && s[0].Index == pos.Index {
		unlock()
		return nil // nothing logged since the last one
	}
	st := c.copyState()
	st.head.LogIndex = pos.Index
	from, to := c.moves.list()
	if n := len(from) - maxSavedMoves; n > 0 {
		from, to = from[n:], to[n:] // the newest
	}
	st.head.MovedFrom, st.head.MovedTo = wire.AddrsToPB(from), wire.AddrsToPB(to)
	st.head.Starts = c.startsPB()
	err := c.samplerState(st.head) // under the locks, as of pos
	unlock()
	if err != nil {
		return err
	}
	var size int64
	err = c.j.WriteSnapshot(pos, func(w io.Writer) error {
		cw := &countWriter{w: w}
		err := st.write(cw, nil)
		size = cw.n
		return err
	})
	var cleanup *journal.CleanupError
	if err == nil || errors.As(err, &cleanup) {
		c.lastSnapBytes.Store(size)
	}
	return err
}

// samplerState adds the samplers' state to a state header: the
// configured sampler's and that of those fetches chose.
func (c *Controller) samplerState(head *wirepb.StateHeader) error {
	if err := c.namedState(head); err != nil {
		return err
	}
	ss, ok := c.sampler.(engine.StatefulSampler)
	if !ok {
		return nil
	}
	b, err := ss.SaveState()
	if err != nil {
		return fmt.Errorf("sampler state: %w", err)
	}
	head.Sampler = b
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (w *countWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n += int64(n)
	return n, err
}

// snapshotter takes a snapshot when the log since the last one outgrows
// the state, until Close.
func (c *Controller) snapshotter() {
	defer close(c.snapDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.snapStop:
			return
		case <-t.C:
		}
		if !c.snapshotDue() {
			continue
		}
		if err := c.snapshot(); err != nil && c.cfg.Logf != nil {
			c.cfg.Logf("controller: snapshot: %v", err)
		}
	}
}

// snapshotDue reports whether the log since the last snapshot outgrew
// both SnapshotBytes and that snapshot: a state larger than the bound is
// not written again for every bound's worth of log.
func (c *Controller) snapshotDue() bool {
	return c.j.SinceSnapshot() >= max(c.cfg.SnapshotBytes, c.lastSnapBytes.Load())
}

// closeJournal stops the snapshotter, snapshots what was logged since the
// last snapshot (a restart then replays nothing), and closes the journal.
func (c *Controller) closeJournal() error {
	if c.j == nil {
		return nil
	}
	close(c.snapStop)
	<-c.snapDone
	var err error
	if c.j.SinceSnapshot() > 0 && c.j.Err() == nil {
		err = c.snapshot()
	}
	return errors.Join(err, c.j.Close())
}

// rowsOp records rows that became active (with their keys, if withKeys).
func (p *partition) rowsOp(rows []*row, withKeys bool) *wirepb.LogOp {
	o := &wirepb.RowsOp{Partition: p.id, Gen: p.gen, Indexes: make([]uint64, len(rows))}
	if withKeys {
		o.Keys, o.Seqs = make([]string, len(rows)), make([]uint64, len(rows))
	}
	for i, r := range rows {
		o.Indexes[i] = r.index
		if withKeys {
			o.Keys[i], o.Seqs[i] = p.keyOf(r), r.seq
		}
	}
	return &wirepb.LogOp{Op: &wirepb.LogOp_Rows{Rows: o}}
}

// createdOp records the rows at positions at of rows, created for keys
// by change number change.
func (p *partition) createdOp(rows []*row, at []int, change uint64) *wirepb.LogOp {
	op := p.rowsOp(pick(rows, at), true)
	op.GetRows().ChangeSeq = change
	return op
}

func commitOp(p *partition, indexes []uint64, fields []engine.CommitField) *wirepb.CommitOp {
	return &wirepb.CommitOp{Partition: p.id, Gen: p.gen, Indexes: indexes, Fields: wire.CommitFieldsToPB(fields)}
}

// tagsOp records tags merged into rows; it fails for tags that cannot be
// encoded (the change must then not happen).
func tagsOp(p *partition, indexes []uint64, tags []engine.Tags) (*wirepb.LogOp, error) {
	b, err := wire.TagsToPB(tags)
	if err != nil {
		return nil, err
	}
	return &wirepb.LogOp{Op: &wirepb.LogOp_Tags{Tags: &wirepb.TagsOp{Partition: p.id, Gen: p.gen, Indexes: indexes, Tags: b}}}, nil
}
