package engine

import (
	"fmt"
	"reflect"
	"slices"
)

// Operations on KVMeta. As with [BatchMeta], every function returns a new
// meta that shares no slice or map with its inputs, and a nil *KVMeta
// behaves as one with no keys.

// NewKVMeta validates and builds a KV meta. tags may be nil, which gives
// each key an empty tag map; otherwise it must have one entry per key (a
// nil entry also becomes an empty map). A repeated key or field is an
// error wrapping [ErrInvalid] that names it. keys, tags and fields are
// copied (tags deeply); a nil fields stays nil, meaning "not specified".
func NewKVMeta(partition string, keys []string, tags []Tags, fields []string) (*KVMeta, error) {
	if tags != nil && len(tags) != len(keys) {
		return nil, fmt.Errorf("kv meta with %d keys and %d tag maps: %w", len(keys), len(tags), ErrInvalid)
	}
	if d := duplicates(keys); len(d) > 0 {
		return nil, fmt.Errorf("kv meta keys %s appear more than once: %w", QuoteKeys(d), ErrInvalid)
	}
	if d := duplicates(fields); len(d) > 0 {
		return nil, fmt.Errorf("kv meta fields %s appear more than once: %w", QuoteKeys(d), ErrInvalid)
	}
	var m *KVMeta
	if len(keys) == 1 && len(fields) <= oneKeyFields {
		// A one-key meta (what a KV put of one key returns) in one
		// allocation, its slices capped at their lengths.
		mem := &struct {
			m      KVMeta
			keys   [1]string
			tags   [1]Tags
			fields [oneKeyFields]string
		}{}
		m = &mem.m
		m.Keys = append(mem.keys[:0:1], keys...)
		m.Tags = mem.tags[:1:1]
		if fields != nil {
			m.Fields = append(mem.fields[:0:len(fields)], fields...)
		}
	} else {
		m = &KVMeta{
			Keys:   append(make([]string, 0, len(keys)), keys...),
			Tags:   make([]Tags, len(keys)),
			Fields: slices.Clone(fields),
		}
	}
	m.Partition = partition
	for i := range m.Tags {
		if tags != nil && tags[i] != nil {
			m.Tags[i] = tags[i].Clone()
		} else {
			m.Tags[i] = Tags{}
		}
	}
	return m, nil
}

// oneKeyFields is the most fields a one-key meta holds in its own
// allocation.
const oneKeyFields = 4

// emptyKV returns a KV meta with no keys and no partition.
func emptyKV() *KVMeta { return &KVMeta{Keys: []string{}, Tags: []Tags{}} }

// Clone returns a deep copy of m; nil slices and maps stay nil. Clone of
// nil is nil.
func (m *KVMeta) Clone() *KVMeta {
	if m == nil {
		return nil
	}
	return &KVMeta{
		Partition: m.Partition,
		Keys:      slices.Clone(m.Keys),
		Tags:      cloneTagList(m.Tags),
		Fields:    slices.Clone(m.Fields),
		Extra:     cloneExtra(m.Extra),
	}
}

// SelectKeys returns a meta of the named keys, in the given order, with
// their tags. A repeated key is an error wrapping [ErrInvalid]; keys not in
// m are an error wrapping [ErrNotFound] that lists them.
func (m *KVMeta) SelectKeys(keys []string) (*KVMeta, error) {
	m = orEmptyKV(m)
	if err := m.check(); err != nil {
		return nil, err
	}
	if d := duplicates(keys); len(d) > 0 {
		return nil, fmt.Errorf("select keys %s more than once: %w", QuoteKeys(d), ErrInvalid)
	}
	at := make(map[string]int, len(m.Keys))
	for i, k := range m.Keys {
		if _, ok := at[k]; !ok {
			at[k] = i
		}
	}
	pos := make([]int, len(keys))
	var missing []string
	for i, k := range keys {
		p, ok := at[k]
		if !ok {
			missing = append(missing, k)
		}
		pos[i] = p
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("keys %s not in meta: %w", QuoteKeys(missing), ErrNotFound)
	}
	return m.take(pos), nil
}

// Reorder returns a meta whose key i is m's key pos[i]. pos must be a
// permutation of 0..Len-1 (else an error wrapping [ErrInvalid]).
func (m *KVMeta) Reorder(pos []int) (*KVMeta, error) {
	m = orEmptyKV(m)
	if err := m.check(); err != nil {
		return nil, err
	}
	if err := checkPermutation(pos, m.Len()); err != nil {
		return nil, err
	}
	return m.take(pos), nil
}

// Chunk splits m into n metas of consecutive keys, the first Len%n one key
// longer; when n > Len the last chunks have no keys. Each chunk keeps the
// partition, fields and Extra. n <= 0, or n past both Len and
// [MaxChunks], is an error wrapping [ErrInvalid].
func (m *KVMeta) Chunk(n int) ([]*KVMeta, error) {
	m = orEmptyKV(m)
	if err := checkChunks(n, m.Len()); err != nil {
		return nil, err
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	out := make([]*KVMeta, n)
	for i, b := range chunkBounds(m.Len(), n) {
		out[i] = m.take(span(b[0], b[1]))
	}
	return out, nil
}

// ConcatKV joins metas key-wise, skipping those with no keys (nil
// included); with none left the result is an empty meta.
//
// The non-empty inputs must share a partition and, where they specify
// fields, the same set of fields (order aside); a nil Fields matches any.
// The result's Fields is the first specified one. A key in more than one
// input, or an Extra key whose values are not [reflect.DeepEqual], is an
// error wrapping [ErrInvalid] that names it, as is any other mismatch.
func ConcatKV(metas ...*KVMeta) (*KVMeta, error) {
	var parts []*KVMeta
	var argPos []int
	for i, m := range metas {
		if m.Len() == 0 {
			continue
		}
		if err := m.check(); err != nil {
			return nil, fmt.Errorf("concat kv meta %d: %w", i, err)
		}
		parts = append(parts, m)
		argPos = append(argPos, i)
	}
	if len(parts) == 0 {
		return emptyKV(), nil
	}
	out := &KVMeta{Partition: parts[0].Partition}
	fieldsFrom := -1
	rows := 0
	for _, p := range parts {
		rows += p.Len()
	}
	out.Keys = make([]string, 0, rows)
	out.Tags = make([]Tags, 0, rows)
	for j, p := range parts {
		if p.Partition != out.Partition {
			return nil, fmt.Errorf("concat kv: meta %d is in partition %q, meta %d in %q: %w",
				argPos[0], out.Partition, argPos[j], p.Partition, ErrInvalid)
		}
		if p.Fields != nil {
			if fieldsFrom < 0 {
				fieldsFrom = j
				out.Fields = slices.Clone(p.Fields)
			} else if !sameSet(out.Fields, p.Fields) {
				return nil, fmt.Errorf("concat kv: meta %d has fields %q, meta %d has %q: %w",
					argPos[fieldsFrom], out.Fields, argPos[j], p.Fields, ErrInvalid)
			}
		}
		out.Keys = append(out.Keys, p.Keys...)
		for _, t := range p.Tags {
			out.Tags = append(out.Tags, t.Clone())
		}
		for k, v := range p.Extra {
			if have, ok := out.Extra[k]; ok {
				if !reflect.DeepEqual(have, v) {
					return nil, fmt.Errorf("concat kv: extra %q differs between metas (meta %d has %v, an earlier one %v): %w",
						k, argPos[j], v, have, ErrInvalid)
				}
				continue
			}
			if out.Extra == nil {
				out.Extra = make(map[string]any)
			}
			out.Extra[k] = cloneValue(v)
		}
	}
	if d := duplicates(out.Keys); len(d) > 0 {
		return nil, fmt.Errorf("concat kv: keys %s appear in more than one meta: %w", QuoteKeys(d), ErrInvalid)
	}
	return out, nil
}

// check reports a meta whose tags do not line up with its keys.
func (m *KVMeta) check() error {
	if len(m.Tags) != len(m.Keys) {
		return fmt.Errorf("kv meta has %d keys but %d tag maps: %w", len(m.Keys), len(m.Tags), ErrInvalid)
	}
	return nil
}

// take returns a meta of m's keys at pos, which the caller has checked.
func (m *KVMeta) take(pos []int) *KVMeta {
	out := &KVMeta{
		Partition: m.Partition,
		Keys:      pick(m.Keys, pos),
		Tags:      make([]Tags, len(pos)),
		Fields:    slices.Clone(m.Fields),
		Extra:     cloneExtra(m.Extra),
	}
	for i, p := range pos {
		out.Tags[i] = m.Tags[p].Clone()
	}
	return out
}

func orEmptyKV(m *KVMeta) *KVMeta {
	if m == nil {
		return emptyKV()
	}
	return m
}

// sameSet reports whether a and b hold the same strings, ignoring order
// and repeats.
func sameSet(a, b []string) bool {
	in := make(map[string]bool, len(a))
	for _, s := range a {
		in[s] = true
	}
	for _, s := range b {
		if !in[s] {
			return false
		}
	}
	seen := make(map[string]bool, len(b))
	for _, s := range b {
		seen[s] = true
	}
	return len(seen) == len(in)
}
