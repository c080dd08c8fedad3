package controller

// Checkpoints. The format is documented in checkpoint.md beside this file.
// Save holds the controller-wide lock and every partition lock while it
// takes the snapshot, so the file is one consistent view; writing happens
// after the locks are released.

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/tqgo/tq/engine"
)

const (
	checkpointFormat  = "tq-controller-checkpoint"
	checkpointVersion = 1
	checkpointFile    = "controller.json"
)

type ckpt struct {
	Format     string          `json:"format"`
	Version    int             `json:"version"`
	SavedAt    time.Time       `json:"saved_at"`
	Indexes    indexState      `json:"indexes"`
	Partitions []ckptPartition `json:"partitions"`
	Sampler    json.RawMessage `json:"sampler,omitempty"`
}

type ckptPartition struct {
	ID      string      `json:"id"`
	Created time.Time   `json:"created"`
	KeySeq  uint64      `json:"key_seq"`
	Tasks   []string    `json:"tasks"`
	Fields  []ckptField `json:"fields"`
	Rows    []ckptRow   `json:"rows"`
}

type ckptField struct {
	Name  string       `json:"name"`
	DType engine.DType `json:"dtype"`
}

type ckptRow struct {
	Index    uint64      `json:"index"`
	Key      string      `json:"key,omitempty"`
	Seq      uint64      `json:"seq,omitempty"`
	Reserved bool        `json:"reserved,omitempty"`
	Tags     engine.Tags `json:"tags,omitempty"`
	Cells    []ckptCell  `json:"cells,omitempty"`
	Consumed []int       `json:"consumed,omitempty"`
}

type ckptCell struct {
	Field   int          `json:"field"`
	Unit    uint32       `json:"unit"`
	Segment uint32       `json:"segment"`
	Gen     uint32       `json:"gen,omitempty"`
	Offset  uint64       `json:"offset"`
	Len     uint64       `json:"len"`
	Shape   engine.Shape `json:"shape"` // null for opaque fields
}

// Save writes a checkpoint of the controller's state (partitions, rows,
// keys, tags, production, consumption, the index allocator and the
// sampler's state) into dir. It writes a sibling temporary directory,
// fsyncs it and renames it into place, so dir holds either the old
// checkpoint or the new one, never a mix. A dir that exists and holds
// files but no checkpoint is refused with [engine.ErrInvalid]: replacing
// it would delete them.
func (c *Controller) Save(dir string) error {
	if err := checkReplaceable(dir); err != nil {
		return opErr("save checkpoint", dir, err)
	}
	doc, err := c.snapshot()
	if err != nil {
		return opErr("save checkpoint", dir, err)
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return opErr("save checkpoint", dir, fmt.Errorf("encode: %w", err))
	}
	if err := writeDirAtomic(dir, checkpointFile, data); err != nil {
		return opErr("save checkpoint", dir, err)
	}
	return nil
}

// checkReplaceable refuses a dir that Save must not replace: one that
// holds files but no checkpoint (Save moves dir aside and deletes it).
func checkReplaceable(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect checkpoint directory: %w", err)
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, checkpointFile)); err != nil {
		return fmt.Errorf("%s holds %d entries but no %s; refusing to replace it: %w", dir, len(entries), checkpointFile, engine.ErrInvalid)
	}
	return nil
}

func (c *Controller) snapshot() (*ckpt, error) {
	doc := &ckpt{Format: checkpointFormat, Version: checkpointVersion, SavedAt: time.Now().UTC()}
	c.mu.Lock()
	ids := make([]string, 0, len(c.parts))
	for id := range c.parts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		c.parts[id].mu.Lock()
	}
	for _, id := range ids {
		doc.Partitions = append(doc.Partitions, c.parts[id].snapshot())
	}
	doc.Indexes = c.idx.snapshot()
	for _, id := range ids {
		c.parts[id].mu.Unlock()
	}
	c.mu.Unlock()
	if ss, ok := c.sampler.(engine.StatefulSampler); ok {
		st, err := ss.SaveState()
		if err != nil {
			return nil, fmt.Errorf("sampler state: %w", err)
		}
		if len(st) > 0 {
			if !json.Valid(st) {
				return nil, fmt.Errorf("sampler state is not JSON: %w", engine.ErrInvalid)
			}
			doc.Sampler = st
		}
	}
	return doc, nil
}

func (p *partition) snapshot() ckptPartition {
	cp := ckptPartition{ID: p.id, Created: p.created.UTC(), KeySeq: p.keySeq, Tasks: append([]string{}, p.taskName...)}
	for _, f := range p.order {
		cp.Fields = append(cp.Fields, ckptField{Name: f.name, DType: f.dtype})
	}
	for _, r := range p.sortedRows() {
		cr := ckptRow{Index: r.index, Key: r.key, Seq: r.seq, Reserved: !r.active, Tags: r.tags.Clone()}
		for slot, cl := range r.cells {
			if !cl.produced() {
				continue
			}
			f := p.order[slot]
			cc := ckptCell{Field: slot, Unit: cl.unit &^ producedBit, Segment: cl.seg, Gen: cl.gen, Offset: cl.off, Len: cl.len}
			switch f.kind {
			case engine.Dense:
				cc.Shape = f.shape.Clone()
			case engine.Ragged:
				cc.Shape = f.shapes[r.index].Clone()
			}
			if cc.Shape == nil && f.kind != engine.Opaque {
				cc.Shape = engine.Shape{}
			}
			cr.Cells = append(cr.Cells, cc)
		}
		for t := range p.taskName {
			if r.isConsumed(t) {
				cr.Consumed = append(cr.Consumed, t)
			}
		}
		cp.Rows = append(cp.Rows, cr)
	}
	return cp
}

// writeDirAtomic writes name=data into a fresh temporary sibling of dir,
// fsyncs file and directory, and renames it to dir (replacing an existing
// checkpoint). On failure nothing is left behind.
func writeDirAtomic(dir, name string, data []byte) (err error) {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("create parent: %w", err)
	}
	tmp := dir + ".tmp-" + randSuffix()
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, name), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("create checkpoint file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write checkpoint file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync checkpoint file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close checkpoint file: %w", err)
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	var old string
	if _, statErr := os.Stat(dir); statErr == nil {
		old = dir + ".old-" + randSuffix()
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("move old checkpoint aside: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return fmt.Errorf("rename checkpoint into place: %w", err)
	}
	if old != "" {
		os.RemoveAll(old)
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

func randSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Load replaces the controller's state with the checkpoint in dir. The
// whole file is decoded and validated, and the new state built, before
// anything is replaced: a bad checkpoint (wrapping [engine.ErrCorrupt], or
// an *os.PathError for a missing one) leaves the controller as it was.
// Fetches blocked on replaced partitions wake and look again.
func (c *Controller) Load(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, checkpointFile))
	if err != nil {
		return opErr("load checkpoint", dir, err)
	}
	var doc ckpt
	if err := json.Unmarshal(data, &doc); err != nil {
		return opErr("load checkpoint", dir, corrupt("decode %s: %s", checkpointFile, err.Error()))
	}
	parts, err := buildState(&doc)
	if err != nil {
		return opErr("load checkpoint", dir, err)
	}
	if len(doc.Sampler) > 0 {
		ss, ok := c.sampler.(engine.StatefulSampler)
		if !ok {
			return opErr("load checkpoint", dir, fmt.Errorf("checkpoint has sampler state but the sampler %T keeps none: %w", c.sampler, engine.ErrCorrupt))
		}
		if err := ss.LoadState(doc.Sampler); err != nil {
			return opErr("load checkpoint", dir, fmt.Errorf("sampler state: %w", err))
		}
	}
	var inUse bitset
	used := 0
	for _, p := range parts {
		p.rows.all(func(r *row) { inUse.set(r.index); used++ })
	}
	c.mu.Lock()
	old := c.parts
	c.parts = parts
	c.idx.mu.Lock()
	c.idx.next = doc.Indexes.Next
	c.idx.reusable = append([]uint64{}, doc.Indexes.Reusable...)
	c.idx.head = 0
	c.idx.inUse, c.idx.used = inUse, used
	c.idx.mu.Unlock()
	close(c.created)
	c.created = make(chan struct{})
	c.mu.Unlock()
	for _, p := range old {
		p.mu.Lock()
		p.dropped = true
		p.notify()
		p.mu.Unlock()
	}
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, engine.ErrCorrupt)...)
}

// buildState validates a decoded checkpoint and builds partitions from it.
func buildState(doc *ckpt) (map[string]*partition, error) {
	if doc.Format != checkpointFormat {
		return nil, corrupt("format %q, want %q", doc.Format, checkpointFormat)
	}
	if doc.Version != checkpointVersion {
		return nil, corrupt("version %d, this build reads %d", doc.Version, checkpointVersion)
	}
	if doc.Indexes.Next > maxIndexes {
		return nil, corrupt("next index %d is beyond %d", doc.Indexes.Next, uint64(maxIndexes))
	}
	used := make(map[uint64]string)
	parts := make(map[string]*partition, len(doc.Partitions))
	for _, cp := range doc.Partitions {
		if cp.ID == "" {
			return nil, corrupt("partition with an empty id")
		}
		if _, dup := parts[cp.ID]; dup {
			return nil, corrupt("partition %q appears twice", cp.ID)
		}
		p := newPartition(cp.ID)
		p.created, p.keySeq = cp.Created, cp.KeySeq
		for _, t := range cp.Tasks {
			if _, dup := p.tasks[t]; dup || t == "" {
				return nil, corrupt("partition %q: bad or repeated task %q", cp.ID, t)
			}
			p.taskSlot(t)
		}
		for _, cf := range cp.Fields {
			if cf.Name == "" {
				return nil, corrupt("partition %q: field with an empty name", cp.ID)
			}
			if _, dup := p.fields[cf.Name]; dup {
				return nil, corrupt("partition %q: field %q appears twice", cp.ID, cf.Name)
			}
			if cf.DType != engine.InvalidDType && !cf.DType.Valid() {
				return nil, corrupt("partition %q: field %q has dtype %v", cp.ID, cf.Name, cf.DType)
			}
			f := &field{name: cf.Name, slot: len(p.order)}
			p.fields[cf.Name] = f
			p.order = append(p.order, f)
		}
		for _, cr := range cp.Rows {
			if other, dup := used[cr.Index]; dup {
				return nil, corrupt("row %d is in partitions %q and %q", cr.Index, other, cp.ID)
			}
			used[cr.Index] = cp.ID
			if cr.Index >= doc.Indexes.Next {
				return nil, corrupt("row %d is beyond the allocator's next index %d", cr.Index, doc.Indexes.Next)
			}
			r := &row{index: cr.Index, key: cr.Key, seq: cr.Seq, active: !cr.Reserved, tags: cr.Tags.Clone()}
			if r.key != "" {
				if _, dup := p.keys[r.key]; dup {
					return nil, corrupt("partition %q: key %q appears twice", cp.ID, r.key)
				}
				p.keys[r.key] = r
			}
			p.rows.put(r)
			if cr.Reserved {
				if len(cr.Cells) > 0 {
					return nil, corrupt("partition %q: reserved row %d has cells", cp.ID, r.index)
				}
				p.reserved.ReplaceOrInsert(r.index)
			}
			for _, t := range cr.Consumed {
				if t < 0 || t >= len(p.taskName) {
					return nil, corrupt("partition %q row %d: consumed by unknown task %d", cp.ID, r.index, t)
				}
				r.setConsumed(t, true)
			}
			for _, cc := range cr.Cells {
				if cc.Field < 0 || cc.Field >= len(p.order) {
					return nil, corrupt("partition %q row %d: cell of unknown field %d", cp.ID, r.index, cc.Field)
				}
				if cc.Unit&producedBit != 0 {
					return nil, corrupt("partition %q row %d: unit id %d out of range", cp.ID, r.index, cc.Unit)
				}
				f := p.order[cc.Field]
				dt := cp.Fields[cc.Field].DType
				if !dt.Valid() {
					return nil, corrupt("partition %q: field %q has cells but no dtype", cp.ID, f.name)
				}
				if r.has(f.slot) {
					return nil, corrupt("partition %q row %d: field %q stored twice", cp.ID, r.index, f.name)
				}
				opaque := dt == engine.Bytes
				if opaque != (cc.Shape == nil) {
					return nil, corrupt("partition %q row %d: field %q shape does not match dtype %v", cp.ID, r.index, f.name, dt)
				}
				if err := cc.Shape.Validate(); err != nil {
					return nil, corrupt("partition %q row %d: %s", cp.ID, r.index, err.Error())
				}
				for len(r.cells) <= f.slot {
					r.cells = append(r.cells, cell{})
				}
				r.cells[f.slot] = cell{off: cc.Offset, len: cc.Len, seg: cc.Segment, gen: cc.Gen, unit: cc.Unit | producedBit}
				p.recordCell(f, r.index, dt, opaque, cc.Shape)
			}
		}
		for i, cf := range cp.Fields {
			if f := p.order[i]; f.produced > 0 && f.dtype != cf.DType {
				return nil, corrupt("partition %q: field %q dtype disagrees with its cells", cp.ID, cf.Name)
			}
		}
		parts[cp.ID] = p
	}
	seen := make(map[uint64]struct{}, len(doc.Indexes.Reusable))
	for _, gi := range doc.Indexes.Reusable {
		if gi >= doc.Indexes.Next {
			return nil, corrupt("reusable index %d is beyond next index %d", gi, doc.Indexes.Next)
		}
		if p, ok := used[gi]; ok {
			return nil, corrupt("reusable index %d is in use by partition %q", gi, p)
		}
		if _, dup := seen[gi]; dup {
			return nil, corrupt("reusable index %d appears twice", gi)
		}
		seen[gi] = struct{}{}
	}
	return parts, nil
}
