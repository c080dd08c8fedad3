package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// canonJSON is a tag value as a JSON reader holds it after a round trip,
// written back: numbers by value, so 1, 1.0 and int64(1) are one value.
func canonJSON(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	var back any
	require.NoError(t, json.Unmarshal(b, &back))
	b, err = json.Marshal(back)
	require.NoError(t, err)
	return string(b)
}

// modelTags is a key's tags in the model: name → canonical JSON.
type modelTags map[string]string

func canonTags(t testing.TB, tags engine.Tags) modelTags {
	if len(tags) == 0 {
		return nil
	}
	out := modelTags{}
	for k, v := range tags {
		out[k] = canonJSON(t, v)
	}
	return out
}

// modelMatch is the filter's meaning, written apart from engine's.
func modelMatch(t testing.TB, tags modelTags, where engine.TagFilter) bool {
	for _, c := range where {
		v, ok := tags[c.Name]
		switch c.Test {
		case engine.TagExists:
			if !ok {
				return false
			}
		case engine.TagAbsent:
			if ok {
				return false
			}
		default:
			hit := false
			for _, want := range c.Values {
				hit = hit || ok && v == canonJSON(t, want)
			}
			if !hit {
				return false
			}
		}
	}
	return true
}

// tagValues mixes JSON types that must (1, 1.0, int64(1)) and must not
// ("1", true, null) compare equal.
var tagValues = []any{nil, 1, 1.0, int64(1), json.Number("1.0"), "1", true, false, 2, 2.5, int64(2), "pending", []any{1}, []any{json.Number("1.0")}, []any{"1"}, map[string]any{"a": 1}, map[string]any{"a": 1.0}}

// TestTagsAgainstModel applies random tag changes (puts with and without
// fields, compare-and-set with values of mixed JSON types, against
// missing keys and tags, tag removals, clears, restarts of a durable
// controller) and checks each answer, every listing and every filtered
// listing against a simple model.
func TestTagsAgainstModel(t *testing.T) {
	for _, durable := range []bool{false, true} {
		for seed := range uint64(2) {
			t.Run(fmt.Sprintf("durable=%v/seed=%d", durable, seed), func(t *testing.T) {
				testTagsAgainstModel(t, seed, durable, 300)
			})
		}
	}
}

func testTagsAgainstModel(t *testing.T, seed uint64, durable bool, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x74616773))
	dir := filepath.Join(t.TempDir(), "data")
	open := func() *Controller {
		if durable {
			return openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
		}
		return newController(t, DefaultConfig())
	}
	c := open()
	defer func() { c.Close() }()
	const part = "p"
	model := map[string]modelTags{}
	keyPool := []string{"a", "b", "c", "d", "e"}
	names := []string{"s", "n", "x"}
	randVal := func() any { return tagValues[rng.IntN(len(tagValues))] }
	randKeys := func() []string {
		ks := slices.Clone(keyPool)
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		return ks[:1+rng.IntN(3)]
	}
	randFilter := func() engine.TagFilter {
		var f engine.TagFilter
		for range rng.IntN(3) {
			cnd := engine.TagCondition{Name: names[rng.IntN(len(names))], Test: engine.TagTest(1 + rng.IntN(4))}
			switch cnd.Test {
			case engine.TagEquals:
				cnd.Values = []any{randVal()}
			case engine.TagIn:
				cnd.Values = []any{randVal(), randVal()}
			}
			f = append(f, cnd)
		}
		return f
	}
	var log []string
	check := func() {
		t.Helper()
		got := map[string]modelTags{}
		for _, ki := range c.ListKeys(part)[part] {
			got[ki.Key] = canonTags(t, ki.Tags)
		}
		require.Equal(t, model, got, "listing\n%v", log)
		for range 4 {
			f := randFilter()
			where, err := c.ListKeysWhere(part, f)
			require.NoError(t, err)
			var gotKeys, wantKeys, clientKeys []string
			for _, ki := range where[part] {
				gotKeys = append(gotKeys, ki.Key)
			}
			for k, tags := range model {
				if modelMatch(t, tags, f) {
					wantKeys = append(wantKeys, k)
				}
			}
			for _, ki := range c.ListKeys(part)[part] {
				if f.Match(ki.Tags) {
					clientKeys = append(clientKeys, ki.Key)
				}
			}
			sort.Strings(gotKeys)
			sort.Strings(wantKeys)
			sort.Strings(clientKeys)
			require.Equal(t, wantKeys, gotKeys, "filter %v\n%v", f, log)
			require.Equal(t, wantKeys, clientKeys, "filter %v on the listing\n%v", f, log)
		}
	}

	for range steps {
		switch op := rng.IntN(20); {
		case op < 5: // a put: tags, maybe fields
			keys := randKeys()
			tags := make([]engine.Tags, len(keys))
			for i := range tags {
				if rng.IntN(4) > 0 {
					tags[i] = engine.Tags{names[rng.IntN(len(names))]: randVal()}
				}
			}
			req := engine.KeysCommit{Partition: part, Keys: keys, Tags: tags}
			if rng.IntN(2) == 0 {
				req = keysCommit(part, keys, 1, "f")
				req.Tags = tags
			}
			got, err := c.CommitKeys(req)
			require.NoError(t, err)
			for i, k := range keys {
				m := maps.Clone(model[k])
				for n, v := range tags[i] {
					if m == nil {
						m = modelTags{}
					}
					m[n] = canonJSON(t, v)
				}
				model[k] = m
				require.Equal(t, m, canonTags(t, got.Tags[i]), "put's answer for %s\n%v", k, log)
			}
			log = append(log, fmt.Sprintf("put %v %v fields=%v", keys, tags, req.Fields != nil))
		case op < 11: // compare and set
			k, n := keyPool[rng.IntN(len(keyPool))], names[rng.IntN(len(names))]
			old, nv := randVal(), randVal()
			if rng.IntN(2) == 0 {
				// Often the value it holds, in another type maybe.
				if cur, ok := model[k][n]; ok {
					for _, v := range tagValues {
						if canonJSON(t, v) == cur && rng.IntN(2) == 0 {
							old = v
						}
					}
				}
			}
			done, err := c.CompareAndSetTag(engine.TagSwap{Partition: part, Key: k, Name: n, Old: old, New: nv})
			require.NoError(t, err)
			cur, has := model[k][n]
			if !has || cur == "null" {
				cur = "null"
			}
			wantSwap := cur == canonJSON(t, old)
			log = append(log, fmt.Sprintf("cas %s.%s %v→%v: %v", k, n, old, nv, done))
			require.Equal(t, wantSwap, done.Swapped, "cas %s.%s %v→%v (holds %s)\n%v", k, n, old, nv, cur, log)
			if !wantSwap {
				require.Equal(t, cur, canonJSON(t, done.Current), "current after a failed swap\n%v", log)
				continue
			}
			require.Equal(t, canonJSON(t, nv), canonJSON(t, done.Current), "current after a swap\n%v", log)
			_, live := model[k]
			switch {
			case nv == nil && live:
				m := maps.Clone(model[k])
				delete(m, n)
				if len(m) == 0 {
					m = nil
				}
				model[k] = m
			case nv != nil:
				m := maps.Clone(model[k])
				if m == nil {
					m = modelTags{}
				}
				m[n] = canonJSON(t, nv)
				model[k] = m
			}
		case op < 13: // tags removed
			keys := randKeys()
			rm := []string{names[rng.IntN(len(names))], names[rng.IntN(len(names))]}
			_, err := c.DeleteTags(part, keys, rm)
			missing := false
			for _, k := range keys {
				if _, ok := model[k]; !ok {
					missing = true
				}
			}
			log = append(log, fmt.Sprintf("deltags %v %v: %v", keys, rm, err))
			if missing {
				require.True(t, errors.Is(err, engine.ErrNotFound), "delete tags of missing keys: %v\n%v", err, log)
				continue
			}
			require.NoError(t, err)
			for _, k := range keys {
				m := maps.Clone(model[k])
				for _, n := range rm {
					delete(m, n)
				}
				if len(m) == 0 {
					m = nil
				}
				model[k] = m
			}
		case op < 15: // keys cleared
			keys := randKeys()
			_, err := c.ClearKeys(part, keys)
			require.NoError(t, err)
			for _, k := range keys {
				delete(model, k)
			}
			log = append(log, fmt.Sprintf("clear %v", keys))
		case op < 16: // a restart
			if !durable {
				continue
			}
			if rng.IntN(2) == 0 {
				require.NoError(t, c.WaitDurable(context.Background()))
				crash(t, c)
				log = append(log, "crash")
			} else {
				require.NoError(t, c.Close())
				log = append(log, "close")
			}
			c = open()
		default:
			check()
		}
	}
	check()
}

// TestTagsConcurrent runs compare-and-set increments, merges and removals
// of other tags of the same key, puts of fields with tags, clears and
// filtered listings at once. The counter ends at the number of swaps that
// won, each expected value has at most one winner, a loser is told a
// value other than the one it expected, merges never undo a swap, a
// listing never sees a put's tags torn or its cells of another put, and
// a durable controller restarts into the same tags.
func TestTagsConcurrent(t *testing.T) {
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			testTagsConcurrent(t, durable)
		})
	}
}

func testTagsConcurrent(t *testing.T, durable bool) {
	dir := filepath.Join(t.TempDir(), "data")
	var c *Controller
	if durable {
		c = openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	} else {
		c = newController(t, DefaultConfig())
	}
	defer func() { c.Close() }()
	const part, workers, tries = "p", 6, 150
	var (
		mu   sync.Mutex
		wins = map[int64]int{} // value swapped from → winners
	)
	var wg sync.WaitGroup
	for w := range workers {
		rng := rand.New(rand.NewPCG(uint64(w), 0x636f6e63))
		wg.Go(func() {
			for i := range tries {
				switch rng.IntN(4) {
				case 0, 1: // increment n of ctr
					done, err := c.CompareAndSetTag(engine.TagSwap{Partition: part, Key: "ctr", Name: "n"})
					if !assert.NoError(t, err) {
						return
					}
					cur, ok := (engine.Tags{"n": done.Current}).Int("n")
					var old any
					if ok {
						old = []any{cur, float64(cur), int(cur)}[rng.IntN(3)]
					}
					done, err = c.CompareAndSetTag(engine.TagSwap{Partition: part, Key: "ctr", Name: "n", Old: old, New: cur + 1})
					if !assert.NoError(t, err) {
						return
					}
					if done.Swapped {
						mu.Lock()
						wins[cur]++
						mu.Unlock()
					} else {
						assert.False(t, engine.TagValueEqual(done.Current, old), "lost a swap to the value it expected")
					}
				case 2: // merge or remove another tag of ctr
					if rng.IntN(2) == 0 {
						_, err := c.CommitKeys(engine.KeysCommit{Partition: part, Keys: []string{"ctr"}, Tags: []engine.Tags{{"z": i}}})
						assert.NoError(t, err)
					} else if _, err := c.DeleteTags(part, []string{"ctr"}, []string{"z"}); err != nil {
						assert.ErrorIs(t, err, engine.ErrNotFound) // before the first swap
					}
				default: // a put of fields and tags, or a clear
					k := fmt.Sprintf("k%d", rng.IntN(3))
					switch rng.IntN(5) {
					case 0:
						_, err := c.ClearKeys(part, []string{k})
						assert.NoError(t, err)
					case 1:
						if _, err := c.DeleteTags(part, []string{k}, []string{"v", "w"}); err != nil {
							assert.ErrorIs(t, err, engine.ErrNotFound)
						}
					default:
						ver := int64(w*tries + i + 1)
						req := keysCommit(part, []string{k}, 1, "f")
						req.Fields[0].Locs[0].Addr.Offset = uint64(ver) * 8
						req.Tags = []engine.Tags{{"v": ver, "w": float64(ver)}}
						_, err := c.CommitKeys(req)
						assert.NoError(t, err)
					}
				}
			}
		})
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			where, err := c.ListKeysWhere(part, engine.TagFilter{{Name: "v", Test: engine.TagExists}})
			if !assert.NoError(t, err) {
				return
			}
			for _, ki := range where[part] {
				v, _ := ki.Tags.Int("v")
				w, _ := ki.Tags.Int("w")
				assert.Equal(t, v, w, "key %s: tags of two puts", ki.Key)
				m, err := c.ResolveKeys(part, []string{ki.Key}, nil, false)
				if err != nil {
					continue // cleared since
				}
				mv, ok := m.Tags[0].Int("v")
				if ok && m.Cells["f"] != nil {
					assert.Equal(t, uint64(mv)*8, m.Cells["f"][0].Addr.Offset, "key %s: cell and tag of two puts", ki.Key)
				}
			}
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()

	total := 0
	for from, n := range wins {
		assert.Equal(t, 1, n, "winners of the swap from %d", from)
		total += n
	}
	n, ok := tagsOf(t, c, part)["ctr"].Int("n")
	require.True(t, ok)
	require.Equal(t, int64(total), n, "swaps won")
	if !durable {
		return
	}
	before := tagsOf(t, c, part)
	require.NoError(t, c.Close())
	c = openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	after := tagsOf(t, c, part)
	require.Equal(t, len(before), len(after))
	for k, tags := range before {
		require.True(t, tags.Equal(after[k]), "key %s: %v before the restart, %v after", k, tags, after[k])
	}
}
