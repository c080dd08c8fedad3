package controller

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// stateSeeds returns state files the real writer made: an empty
// controller's, and one with rows, cells, keys, tags, a consuming task, a
// reserved row and a cleared key.
func stateSeeds(t testing.TB) [][]byte {
	var out [][]byte
	save := func(c *Controller) {
		dir := filepath.Join(t.TempDir(), "ck")
		if err := c.Save(dir); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, stateFile))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	newC := func() *Controller {
		c, err := New(DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	save(newC())

	c := newC()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Insert("p", 4, []string{"x", "y"})
	must(err)
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: []uint64{0, 1}, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Float32, Kind: engine.Dense, Shape: engine.Shape{2}},
		{Name: "y", DType: engine.Bytes, Kind: engine.Opaque},
	}})
	must(err)
	_, err = c.Fetch(t.Context(), engine.FetchRequest{Partition: "p", Task: "t", Fields: []string{"x"}, BatchSize: 1})
	must(err)
	_, err = c.ResolveKeys("kv", []string{"a", "b", "c"}, nil, true)
	must(err)
	m, err := c.ResolveKeys("kv", []string{"a", "b"}, nil, false)
	must(err)
	must(c.SetTags("kv", m.Indexes, []engine.Tags{{"n": 1, "s": "x"}, {"l": []any{1.5, nil, true}, "o": map[string]any{"k": "v"}}}))
	_, err = c.ClearKeys("kv", []string{"c"})
	must(err)
	save(c)
	return out
}

// resealState rewrites the trailer of a state file (its last
// length-delimited message) with the checksum of the messages before it,
// so that a fuzzed file gets past the checksum to the decoding behind it.
// Bytes that do not split into messages, or whose last is no trailer, are
// returned as they are.
func resealState(b []byte) []byte {
	var msgs [][]byte
	for rest := b; len(rest) > 0; {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return b
		}
		msgs, rest = append(msgs, rest[k:k+int(n)]), rest[k+int(n):]
	}
	if len(msgs) == 0 {
		return b
	}
	tr := &wirepb.StateTrailer{}
	if proto.Unmarshal(msgs[len(msgs)-1], tr) != nil {
		return b
	}
	tr.Crc32C = 0
	for _, m := range msgs[:len(msgs)-1] {
		tr.Crc32C = crc32.Update(tr.Crc32C, castagnoli, m)
	}
	last, err := proto.Marshal(tr)
	if err != nil {
		return b
	}
	out := make([]byte, 0, len(b)+8)
	for _, m := range msgs[:len(msgs)-1] {
		out = binary.AppendUvarint(out, uint64(len(m)))
		out = append(out, m...)
	}
	out = binary.AppendUvarint(out, uint64(len(last)))
	return append(out, last...)
}

// FuzzLoadState feeds a state file, as it is and with its checksum made
// to agree (see resealState), through the two paths that read one: a
// checkpoint load (Controller.Load) and a start from a snapshot
// (readStateFile, then adopt into a fresh controller). Neither may panic;
// a file refused must be refused with an error naming it, and a damaged
// one with engine.ErrCorrupt (or, for the file's own claims it cannot
// take, ErrNotSupported or ErrInvalid). A state loaded must save again.
func FuzzLoadState(f *testing.F) {
	for _, s := range stateSeeds(f) {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, resealState(data)} {
			if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
			// A checkpoint load names the checkpoint (its directory) or
			// the file; a start, the file.
			checkLoadErr := func(what string, err error, names ...string) {
				if err == nil {
					return
				}
				if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(err.Error(), n) }) {
					t.Fatalf("%s: the error names none of %q: %v", what, names, err)
				}
				if !errors.Is(err, engine.ErrCorrupt) && !errors.Is(err, engine.ErrNotSupported) && !errors.Is(err, engine.ErrInvalid) {
					t.Fatalf("%s: an unclassified error: %v", what, err)
				}
			}

			c, err := New(DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Load(dir)
			checkLoadErr("load", err, dir, stateFile)
			if err == nil {
				var buf bytes.Buffer
				unlock := c.lockAll()
				st := c.copyState()
				unlock()
				if err := st.write(&buf, nil); err != nil {
					t.Fatalf("a loaded state does not save: %v", err)
				}
				if _, err := readState(bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
					t.Fatalf("a loaded state saves as a file that does not read: %v", err)
				}
			}
			c.Close()

			ls, err := readStateFile(filepath.Join(dir, stateFile))
			checkLoadErr("read", err, stateFile)
			if err == nil {
				c, err := New(DefaultConfig())
				if err != nil {
					t.Fatal(err)
				}
				c.replaying = true
				if err := c.adopt(ls); err != nil {
					checkLoadErr("adopt", err, "")
				}
				c.replaying = false
				c.Close()
			}
		}
	})
}
