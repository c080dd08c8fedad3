package controller

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// feedFollower follows a partition's change feed the way a replay buffer
// does: it keeps its own copy of the keys' tags, moved on by each answer.
type feedFollower struct {
	cursor []byte
	view   map[string]engine.Tags
	// pending collects the keys of a reset's answers until the last one.
	pending map[string]engine.Tags
	// mayReset says that something since the cursor (the partition
	// cleared, a checkpoint loaded) allows a reset.
	mayReset bool
}

func (f *feedFollower) clone() *feedFollower {
	g := &feedFollower{cursor: f.cursor, view: maps.Clone(f.view), mayReset: f.mayReset}
	if f.pending != nil {
		g.pending = maps.Clone(f.pending)
	}
	return g
}

// TestKeyChangesRandom applies random changes to a partition (puts, tag
// changes, clears, keys made again, the partition cleared, checkpoints
// loaded, restarts of a durable controller) and has followers, each from
// its own cursor and with its own page size, catch up at random moments:
// each must end with the keys and tags the partition holds.
func TestKeyChangesRandom(t *testing.T) {
	for _, durable := range []bool{false, true} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("durable=%v/seed=%d", durable, seed), func(t *testing.T) {
				testKeyChangesRandom(t, seed, durable, 400)
			})
		}
	}
}

func testKeyChangesRandom(t *testing.T, seed uint64, durable bool, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x6368616e676573))
	dir := t.TempDir()
	open := func() *Controller {
		if durable {
			return openDurable(t, filepath.Join(dir, "data"), Config{SnapshotBytes: 1 << 40})
		}
		return newController(t, DefaultConfig())
	}
	c := open()
	defer func() { c.Close() }()
	const part = "p"
	model := map[string]engine.Tags{}
	var saved map[string]engine.Tags // the model as of the last checkpoint
	ckDir := ""
	followers := []*feedFollower{{view: map[string]engine.Tags{}}}
	keyPool := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	randKeys := func() []string {
		n := 1 + rng.IntN(3)
		ks := slices.Clone(keyPool)
		rng.Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
		return ks[:n]
	}
	val := 0
	next := func() string { val++; return fmt.Sprintf("v%d", val) }
	var log []string // what happened, for a failure's message

	catchUp := func(f *feedFollower, full bool) {
		for {
			limit := rng.IntN(4)
			ch, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: part, Cursor: f.cursor, Limit: limit})
			require.NoError(t, err)
			if ch.Reset {
				require.True(t, f.mayReset, "a reset for a cursor nothing invalidated\n%v", log)
				f.pending = map[string]engine.Tags{}
			}
			seen := map[string]bool{}
			into := f.view
			if f.pending != nil {
				into = f.pending
			}
			for _, kc := range ch.Changes {
				require.False(t, seen[kc.Key], "key %q twice in one answer", kc.Key)
				seen[kc.Key] = true
				if kc.Cleared {
					delete(into, kc.Key)
				} else {
					into[kc.Key] = kc.Tags.Clone()
				}
			}
			if len(ch.Cursor) > 0 || ch.Reset {
				f.cursor = ch.Cursor
			}
			if !ch.More {
				if f.pending != nil {
					f.view, f.pending = f.pending, nil
				}
				f.mayReset = false
				require.Equal(t, model, f.view, "a follower caught up\n%v", log)
				return
			}
			if !full && rng.IntN(3) == 0 {
				return
			}
		}
	}
	everyone := func() {
		for _, f := range followers {
			f.mayReset = true
		}
	}

	for step := range steps {
		switch op := rng.IntN(20); {
		case op < 5: // a put: keys made or their tags merged
			keys := randKeys()
			tags := make([]engine.Tags, len(keys))
			for i := range tags {
				if rng.IntN(3) > 0 {
					tags[i] = engine.Tags{"t": next()}
				}
			}
			_, err := c.CommitKeys(engine.KeysCommit{Partition: part, Keys: keys, Tags: tags})
			require.NoError(t, err)
			for i, k := range keys {
				m := maps.Clone(model[k])
				if m == nil {
					m = engine.Tags{}
				}
				maps.Copy(m, tags[i])
				if len(m) == 0 {
					m = nil
				}
				model[k] = m
			}
			log = append(log, fmt.Sprintf("put %v %v", keys, tags))
		case op < 7: // compare and set, or delete, a tag
			k := keyPool[rng.IntN(len(keyPool))]
			var nv any
			if rng.IntN(3) > 0 {
				nv = next()
			}
			cur, live := model[k]
			sw, err := c.CompareAndSetTag(engine.TagSwap{Partition: part, Key: k, Name: "t", Old: cur["t"], New: nv})
			require.NoError(t, err)
			require.True(t, sw.Swapped)
			if nv != nil {
				m := maps.Clone(cur)
				if m == nil {
					m = engine.Tags{}
				}
				m["t"] = nv
				model[k] = m
			} else if live {
				m := maps.Clone(cur)
				delete(m, "t")
				if len(m) == 0 {
					m = nil
				}
				model[k] = m
			}
			log = append(log, fmt.Sprintf("cas %s %v", k, nv))
		case op < 8: // tags set by row
			var keys []string
			for _, k := range randKeys() {
				if _, ok := model[k]; ok {
					keys = append(keys, k)
				}
			}
			if len(keys) == 0 {
				continue
			}
			m, err := c.ResolveKeys(part, keys, nil, false)
			require.NoError(t, err)
			tags := make([]engine.Tags, len(keys))
			for i, k := range keys {
				tags[i] = engine.Tags{"u": next()}
				mt := maps.Clone(model[k])
				if mt == nil {
					mt = engine.Tags{}
				}
				maps.Copy(mt, tags[i])
				model[k] = mt
			}
			require.NoError(t, c.SetTags(part, m.Indexes, tags))
			log = append(log, fmt.Sprintf("settags %v %v", keys, tags))
		case op < 9: // keys made without tags
			keys := randKeys()
			_, err := c.ResolveKeys(part, keys, nil, true)
			require.NoError(t, err)
			for _, k := range keys {
				if _, ok := model[k]; !ok {
					model[k] = nil
				}
			}
			log = append(log, fmt.Sprintf("resolve %v", keys))
		case op < 10: // tags deleted
			var keys []string
			for _, k := range randKeys() {
				if _, ok := model[k]; ok {
					keys = append(keys, k)
				}
			}
			if len(keys) == 0 {
				continue
			}
			_, err := c.DeleteTags(part, keys, []string{"t"})
			require.NoError(t, err)
			for _, k := range keys {
				m := maps.Clone(model[k])
				delete(m, "t")
				if len(m) == 0 {
					m = nil
				}
				model[k] = m
			}
			log = append(log, fmt.Sprintf("deltags %v", keys))
		case op < 13: // keys cleared
			keys := randKeys()
			_, err := c.ClearKeys(part, keys)
			require.NoError(t, err)
			for _, k := range keys {
				delete(model, k)
			}
			log = append(log, fmt.Sprintf("clear %v", keys))
		case op < 14 && rng.IntN(4) == 0: // the partition cleared
			_, err := c.ClearPartition(part)
			require.NoError(t, err)
			model = map[string]engine.Tags{}
			everyone()
			log = append(log, "clear partition")
		case op < 15: // a checkpoint saved, or loaded
			if ckDir == "" || rng.IntN(2) == 0 {
				ckDir = filepath.Join(dir, fmt.Sprintf("ck%d", step))
				require.NoError(t, c.Save(ckDir))
				saved = maps.Clone(model)
				log = append(log, "save")
			} else {
				_, err := c.Load(ckDir)
				require.NoError(t, err)
				model = maps.Clone(saved)
				everyone()
				log = append(log, "load")
			}
		case op < 16: // a restart
			if durable {
				switch rng.IntN(3) {
				case 0:
					require.NoError(t, c.WaitDurable(context.Background()))
					crash(t, c)
					log = append(log, "crash")
				case 1:
					require.NoError(t, c.snapshot())
					require.NoError(t, c.WaitDurable(context.Background()))
					crash(t, c)
					log = append(log, "snapshot, crash")
				default:
					require.NoError(t, c.Close())
					log = append(log, "close")
				}
			} else {
				require.NoError(t, c.Close())
				model = map[string]engine.Tags{}
				everyone()
				log = append(log, "restart in memory")
			}
			c = open()
		case op < 17: // a new follower, from a copy of one
			followers = append(followers, followers[rng.IntN(len(followers))].clone())
		default: // a follower catches up, maybe in part
			catchUp(followers[rng.IntN(len(followers))], rng.IntN(2) == 0)
		}
	}
	for _, f := range followers {
		catchUp(f, true)
	}
}
