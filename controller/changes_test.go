package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// changed lists the changes after cursor without waiting.
func changed(t *testing.T, c *Controller, partition string, cursor []byte) engine.KeyChanges {
	t.Helper()
	ch, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: partition, Cursor: cursor})
	require.NoError(t, err)
	return ch
}

// summary writes changes as "key" (with its tags' status, if any) or
// "-key" for a cleared one.
func summary(ch engine.KeyChanges) []string {
	var out []string
	for _, kc := range ch.Changes {
		switch {
		case kc.Cleared:
			out = append(out, "-"+kc.Key)
		case kc.Tags["status"] != nil:
			out = append(out, kc.Key+"="+kc.Tags["status"].(string))
		default:
			out = append(out, kc.Key)
		}
	}
	return out
}

func TestKeyChanges(t *testing.T) {
	c := newController(t, DefaultConfig())
	u1 := engine.UnitID(1)
	// Nothing yet: no partition, an empty answer at once.
	ch := changed(t, c, "p", nil)
	assert.Empty(t, ch.Changes)
	assert.False(t, ch.Reset)

	putTags(t, c, "p", []string{"a", "b", "c"}, engine.Tags{"status": "pending"}, nil, nil)
	ch = changed(t, c, "p", nil)
	assert.Equal(t, []string{"a=pending", "b", "c"}, summary(ch), "from the beginning: every key")
	cur := ch.Cursor
	assert.Empty(t, changed(t, c, "p", cur).Changes, "nothing since")
	assert.Equal(t, cur, changed(t, c, "p", cur).Cursor, "the cursor stays where it was")

	// Each kind of change, in the order of the last change of each key.
	_, err := c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "b", Name: "status", New: "running"})
	require.NoError(t, err)
	m, err := c.ResolveKeys("p", []string{"c"}, nil, false)
	require.NoError(t, err)
	_, err = c.Commit(engine.CommitRequest{Partition: "p", Indexes: m.Indexes, Fields: []engine.CommitField{
		{Name: "x", DType: engine.Int8, Kind: engine.Dense, Shape: engine.Shape{}, Locs: []engine.CellLoc{{Unit: u1, Addr: engine.RemoteAddr{Segment: 1, Len: 1}}}}}})
	require.NoError(t, err)
	_, err = c.ResolveKeys("p", []string{"d"}, nil, true)
	require.NoError(t, err)
	_, err = c.DeleteTags("p", []string{"a"}, []string{"status"})
	require.NoError(t, err)
	_, err = c.ClearKeys("p", []string{"b"})
	require.NoError(t, err)
	require.NoError(t, c.SetTags("p", m.Indexes, []engine.Tags{{"status": "done"}}))
	ch = changed(t, c, "p", cur)
	assert.Equal(t, []string{"d", "a", "-b", "c=done"}, summary(ch))
	assert.False(t, ch.Reset)
	assert.False(t, ch.More)
	// Changes of rows without keys are no key's changes.
	ins := insert(t, c, "p", 2, "y")
	commitDense(t, c, "p", ins.Indexes, "y")
	assert.Empty(t, changed(t, c, "p", ch.Cursor).Changes)

	// A key cleared and made again is reported once, as it is now.
	cur = ch.Cursor
	_, err = c.ClearKeys("p", []string{"d"})
	require.NoError(t, err)
	putTags(t, c, "p", []string{"d"}, engine.Tags{"status": "again"})
	assert.Equal(t, []string{"d=again"}, summary(changed(t, c, "p", cur)))
	// One cleared twice is reported once.
	for range 2 {
		putTags(t, c, "p", []string{"e"}, nil)
		_, err = c.ClearKeys("p", []string{"e"})
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"d=again", "-e"}, summary(changed(t, c, "p", cur)))

	// Pages: limit bounds an answer, More says the next is ready.
	var all []string
	cur = nil
	for {
		ch, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p", Cursor: cur, Limit: 2})
		require.NoError(t, err)
		all = append(all, summary(ch)...)
		cur = ch.Cursor
		if !ch.More {
			assert.LessOrEqual(t, len(ch.Changes), 2)
			break
		}
		assert.Len(t, ch.Changes, 2)
	}
	// The first answer from the beginning has no cleared keys; those that
	// continue it tell what was cleared after it (e was cleared before).
	assert.Equal(t, []string{"a", "c=done", "d=again"}, all)
}

func TestKeyChangesReset(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a"}, nil)
	cur := changed(t, c, "p", nil).Cursor
	// The partition cleared: a reset with nothing; then made again: the
	// old cursor gets a reset listing what there is now.
	_, err := c.ClearPartition("p")
	require.NoError(t, err)
	ch := changed(t, c, "p", cur)
	assert.True(t, ch.Reset)
	assert.Empty(t, ch.Changes)
	putTags(t, c, "p", []string{"b"}, nil)
	ch = changed(t, c, "p", cur)
	assert.True(t, ch.Reset)
	assert.Equal(t, []string{"b"}, summary(ch))
	assert.False(t, changed(t, c, "p", ch.Cursor).Reset, "the new cursor is good")

	// Another controller's cursor (an in-memory one restarted).
	d := newController(t, DefaultConfig())
	putTags(t, d, "p", []string{"z"}, nil)
	ch = changed(t, d, "p", changed(t, c, "p", nil).Cursor)
	assert.True(t, ch.Reset)
	assert.Equal(t, []string{"z"}, summary(ch))

	// Bad cursors and requests.
	for _, tc := range []struct {
		name   string
		req    engine.ChangesRequest
		reason string
	}{
		{"another partition", engine.ChangesRequest{Partition: "q", Cursor: cur}, `cursor of partition "p"`},
		{"malformed", engine.ChangesRequest{Partition: "p", Cursor: []byte{1, 2}}, "malformed"},
		{"truncated", engine.ChangesRequest{Partition: "p", Cursor: cur[:len(cur)-1]}, "cursor"},
		{"no partition", engine.ChangesRequest{}, "empty partition"},
		{"limit", engine.ChangesRequest{Partition: "p", Limit: -1}, "changes per answer"},
	} {
		_, err := c.KeyChanges(context.Background(), tc.req)
		require.ErrorIs(t, err, engine.ErrInvalid, tc.name)
		assert.Contains(t, err.Error(), tc.reason, tc.name)
	}
}

// TestKeyChangesForgetsClearedKeys: past maxCleared cleared keys the
// oldest are forgotten, and a cursor from before them gets a reset; one
// from after them does not.
func TestKeyChangesForgetsClearedKeys(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
	keys := make([]string, maxCleared+10)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	putTags(t, c, "p", []string{"keep"}, nil)
	early := changed(t, c, "p", nil).Cursor
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: make([]engine.Tags, len(keys))})
	require.NoError(t, err)
	_, err = c.ClearKeys("p", keys[:10])
	require.NoError(t, err)
	late := early
	for ch := changed(t, c, "p", late); ; ch = changed(t, c, "p", late) {
		late = ch.Cursor
		if !ch.More {
			break
		}
	}
	_, err = c.ClearKeys("p", keys[10:])
	require.NoError(t, err)
	assert.Equal(t, maxCleared, c.get("p").feed.cleared.len())
	ch := changed(t, c, "p", late)
	assert.False(t, ch.Reset, "the clear after the cursor is remembered whole")
	assert.Len(t, ch.Changes, DefaultKeysPage)
	assert.True(t, ch.More)
	assert.True(t, ch.Changes[0].Cleared)
	ch = changed(t, c, "p", early)
	assert.True(t, ch.Reset, "the first clear's keys are forgotten")
	assert.Equal(t, []string{"keep"}, summary(ch))

	// A restart, from the log and then from a snapshot, keeps the same.
	want, fromLate := stateBytes(t, c), changed(t, c, "p", late)
	require.NoError(t, c.WaitDurable(context.Background()))
	crash(t, c)
	for range 2 {
		d := openDurable(t, dir, Config{})
		assert.Equal(t, want, stateBytes(t, d))
		got := changed(t, d, "p", late)
		assert.Equal(t, fromLate.Changes, got.Changes)
		assert.False(t, got.Reset)
		assert.True(t, changed(t, d, "p", early).Reset)
		require.NoError(t, d.Close())
	}
}

func TestKeyChangesWait(t *testing.T) {
	c := newController(t, DefaultConfig())
	wait := func(ctx context.Context, cursor []byte) chan engine.KeyChanges {
		out := make(chan engine.KeyChanges, 1)
		go func() {
			ch, err := c.KeyChanges(ctx, engine.ChangesRequest{Partition: "p", Cursor: cursor, Wait: true})
			if err != nil {
				ch.Changes = []engine.KeyChange{{Key: "error: " + err.Error()}}
			}
			out <- ch
		}()
		return out
	}
	// Waits for the partition, then for its first key.
	got := wait(context.Background(), nil)
	time.Sleep(20 * time.Millisecond)
	_, err := c.CreatePartition("p")
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond)
	select {
	case ch := <-got:
		t.Fatalf("answered before a key changed: %v", summary(ch))
	default:
	}
	putTags(t, c, "p", []string{"a"}, nil)
	ch := <-got
	require.Equal(t, []string{"a"}, summary(ch))

	// A tag change wakes a waiter.
	got = wait(context.Background(), ch.Cursor)
	time.Sleep(20 * time.Millisecond)
	_, err = c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "a", Name: "status", New: "done"})
	require.NoError(t, err)
	assert.Equal(t, []string{"a=done"}, summary(<-got))

	// A canceled wait ends.
	ctx, cancel := context.WithCancel(context.Background())
	got = wait(ctx, changed(t, c, "p", nil).Cursor)
	time.Sleep(20 * time.Millisecond)
	cancel()
	assert.Contains(t, summary(<-got)[0], "context canceled")

	// Clearing the partition wakes a waiter with a reset.
	got = wait(context.Background(), changed(t, c, "p", nil).Cursor)
	time.Sleep(20 * time.Millisecond)
	_, err = c.ClearPartition("p")
	require.NoError(t, err)
	assert.True(t, (<-got).Reset)

	// Close ends a wait.
	got = wait(context.Background(), nil)
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, c.Close())
	assert.Contains(t, summary(<-got)[0], "closed")
	assert.Zero(t, c.changeWaiters.Load())
}

// TestKeyChangesAcrossRestart: a cursor taken before a durable
// controller restarts (cleanly, or by a crash) lists exactly the changes
// made after it, cleared keys included, without a reset.
func TestKeyChangesAcrossRestart(t *testing.T) {
	for _, stop := range []struct {
		name string
		fn   func(*testing.T, *Controller)
	}{
		{"clean", func(t *testing.T, c *Controller) { require.NoError(t, c.Close()) }},
		{"crash", func(t *testing.T, c *Controller) { crash(t, c) }},
	} {
		t.Run(stop.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
			putTags(t, c, "p", []string{"a", "b", "c"}, engine.Tags{"status": "pending"}, nil, nil)
			cur := changed(t, c, "p", nil).Cursor
			require.NoError(t, c.snapshot()) // the cursor's state in a snapshot, the rest in the log
			_, err := c.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "a", Name: "status", Old: "pending", New: "running"})
			require.NoError(t, err)
			_, err = c.ClearKeys("p", []string{"b"})
			require.NoError(t, err)
			_, err = c.DeleteTags("p", []string{"a"}, []string{"status"})
			require.NoError(t, err)
			putTags(t, c, "p", []string{"d"}, engine.Tags{"status": "new"})
			want := changed(t, c, "p", cur)
			require.Equal(t, []string{"-b", "a", "d=new"}, summary(want))
			require.NoError(t, c.WaitDurable(context.Background()))
			stop.fn(t, c)

			d := openDurable(t, dir, Config{})
			defer d.Close()
			got := changed(t, d, "p", cur)
			assert.False(t, got.Reset)
			assert.Equal(t, want.Changes, got.Changes, "the same changes")
			assert.Equal(t, want.More, got.More)
			// And the counter goes on: a change after the restart comes
			// after the cursor taken before it.
			_, err = d.CompareAndSetTag(engine.TagSwap{Partition: "p", Key: "c", Name: "status", New: "late"})
			require.NoError(t, err)
			assert.Equal(t, []string{"c=late"}, summary(changed(t, d, "p", want.Cursor)))
		})
	}
}

// TestServerKeyChanges: KEY_CHANGES over the wire waits for a change,
// ends with CODE_DEADLINE at its timeout, and a CANCEL of it (its
// caller's context ended) ends the wait on the server.
func TestServerKeyChanges(t *testing.T) {
	ctrl := newController(t, DefaultConfig())
	putTags(t, ctrl, "p", []string{"a"}, nil)
	_, addr := startServer(t, ctrl, ServerConfig{MaxFetchWait: time.Minute}, "unix")
	conn := dialRaw(t, addr, "")
	var first wirepb.KeyChangesReply
	require.NoError(t, do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p"}, &first))
	require.Len(t, first.Changes, 1)

	// A change wakes the wait.
	got := make(chan *wirepb.KeyChangesReply, 1)
	go func() {
		var r wirepb.KeyChangesReply
		assert.NoError(t, do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p", Cursor: first.Cursor, Wait: true}, &r))
		got <- &r
	}()
	waitFor(t, func() bool { return ctrl.changeWaiters.Load() == 1 })
	_, err := ctrl.DeleteTags("p", []string{"a"}, []string{"none"}) // no change
	require.NoError(t, err)
	putTags(t, ctrl, "p", []string{"b"}, engine.Tags{"status": "x"})
	r := <-got
	require.Len(t, r.Changes, 1)
	assert.Equal(t, "b", r.Changes[0].Key)
	assert.JSONEq(t, `{"status":"x"}`, string(r.Changes[0].Tags))

	// Its own timeout.
	start := time.Now()
	err = do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p", Cursor: r.Cursor, Wait: true, TimeoutMs: 20}, &wirepb.KeyChangesReply{})
	assert.Equal(t, wirepb.Code_CODE_DEADLINE, codeOf(err))
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)

	// The caller gives up: the client sends CANCEL, the server stops
	// waiting.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- conn.Do(ctx, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "p", Cursor: r.Cursor, Wait: true}, nil, &wirepb.KeyChangesReply{}, nil)
	}()
	waitFor(t, func() bool { return ctrl.changeWaiters.Load() == 1 })
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	waitFor(t, func() bool { return ctrl.changeWaiters.Load() == 0 })

	// Bad requests are refused with what was wrong.
	err = do(conn, wire.OpKeyChanges, &wirepb.KeyChangesRequest{Partition: "q", Cursor: r.Cursor}, &wirepb.KeyChangesReply{})
	assert.Equal(t, wirepb.Code_CODE_INVALID, codeOf(err))
	assert.Contains(t, err.Error(), `cursor of partition "p"`)
}

// TestKeyChangesListingBelowFloor: a listing of every key (from a nil
// cursor, or a reset) goes on page by page even when its keys were last
// changed before the newest forgotten cleared key: those clears came
// before the listing, and the keys it lists are as they are now.
func TestKeyChangesListingBelowFloor(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b", "c"}, nil, nil, nil)
	old := changed(t, c, "p", nil).Cursor
	keys := make([]string, maxCleared+1)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	_, err := c.CommitKeys(engine.KeysCommit{Partition: "p", Keys: keys, Tags: make([]engine.Tags, len(keys))})
	require.NoError(t, err)
	_, err = c.ClearKeys("p", keys)
	require.NoError(t, err)
	require.True(t, changed(t, c, "p", old).Reset, "the cursor is older than the cleared keys remembered")

	for _, start := range []struct {
		name   string
		cursor []byte
		reset  bool
	}{{"nil cursor", nil, false}, {"reset", old, true}} {
		t.Run(start.name, func(t *testing.T) {
			cur := start.cursor
			var all []string
			for page := 0; ; page++ {
				require.Less(t, page, 10, "the listing does not end: %v", all)
				ch, err := c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p", Cursor: cur, Limit: 2})
				require.NoError(t, err)
				assert.Equal(t, start.reset && page == 0, ch.Reset, "page %d", page)
				all = append(all, summary(ch)...)
				cur = ch.Cursor
				if !ch.More {
					break
				}
			}
			assert.ElementsMatch(t, []string{"a", "b", "c"}, all)
			// A clear after the listing's first page is still told.
			_, err := c.ClearKeys("p", []string{"a"})
			require.NoError(t, err)
			assert.Equal(t, []string{"-a"}, summary(changed(t, c, "p", cur)))
			putTags(t, c, "p", []string{"a"}, nil)
		})
	}

	// A cursor within a listing says when the listing began: past the
	// partition's last change is a reset, and version 2 without it is
	// malformed.
	p := c.get("p")
	forged := changesCursor{cluster: c.cluster, start: c.nonce(), partition: "p", gen: p.gen, pos: changePos{1, 1}, asOf: p.feed.seq + 1}
	assert.True(t, changed(t, c, "p", forged.encode()).Reset)
	_, err = c.KeyChanges(context.Background(), engine.ChangesRequest{Partition: "p", Cursor: []byte{changesCursorVersionAsOf, byte(p.gen), 1, 1, 0, 0, 'p'}})
	require.ErrorIs(t, err, engine.ErrInvalid)

	// A cursor of the versions before cursors named their start (here
	// the same position, version 1) names none: a reset.
	cid := c.cluster
	v1 := append([]byte{changesCursorVersion, byte(p.gen), 1, 1, byte(len(cid))}, cid...)
	assert.True(t, changed(t, c, "p", append(v1, 'p')).Reset)
}

// TestKeyChangesForgottenStart: a controller remembers the newest 64
// starts; a cursor from an older one is answered with a reset, one from
// the oldest it remembers is not.
func TestKeyChangesForgottenStart(t *testing.T) {
	dir := t.TempDir()
	c := openDurable(t, dir, Config{})
	putTags(t, c, "p", []string{"a"}, nil)
	first := changed(t, c, "p", nil).Cursor
	require.NoError(t, c.Close())
	var second []byte
	for i := range maxStarts - 1 {
		c = openDurable(t, dir, Config{})
		if i == 0 {
			second = changed(t, c, "p", nil).Cursor
		}
		require.NoError(t, c.Close())
	}
	c = openDurable(t, dir, Config{})
	defer c.Close()
	require.Len(t, c.starts, maxStarts)
	assert.True(t, changed(t, c, "p", first).Reset, "a start no longer remembered")
	got := changed(t, c, "p", second)
	assert.False(t, got.Reset, "the oldest start remembered")
	assert.Empty(t, got.Changes)
}

// restore replaces the data directory dir with the copy in from, as an
// operator restoring a backup (or a machine whose last writes were lost)
// would leave it.
func restore(t *testing.T, dir, from string) {
	t.Helper()
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.CopyFS(dir, os.DirFS(from)))
}

// TestKeyChangesLostTail: a cursor that saw changes the log later lost (a
// machine crash with --fsync never; an older copy of the data directory
// restored) is answered with a reset, even after new changes have brought
// the partition's change numbers back past it; a cursor from before the
// loss still lists exactly what came after it.
func TestKeyChangesLostTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		// image copies the data directory at the point the log will be
		// cut back to, and stops c; what c logs after it is lost.
		image func(t *testing.T, c *Controller, dir, image string)
	}{
		{"mid-run", func(t *testing.T, c *Controller, dir, image string) {
			// A copy of the live directory: the log as a machine crash
			// would leave it if nothing after this reached the disk.
			require.NoError(t, c.WaitDurable(context.Background()))
			require.NoError(t, os.CopyFS(image, os.DirFS(dir)))
		}},
		{"backup", func(t *testing.T, c *Controller, dir, image string) {
			require.NoError(t, c.Close())
			require.NoError(t, os.CopyFS(image, os.DirFS(dir)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, image := t.TempDir(), filepath.Join(t.TempDir(), "image")
			c := openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
			putTags(t, c, "p", []string{"a"}, engine.Tags{"status": "one"})
			before := changed(t, c, "p", nil).Cursor
			tc.image(t, c, dir, image)
			if tc.name == "backup" {
				c = openDurable(t, dir, Config{SnapshotBytes: 1 << 40})
			}
			putTags(t, c, "p", []string{"b"}, engine.Tags{"status": "lost"})
			seen := changed(t, c, "p", before)
			require.Equal(t, []string{"b=lost"}, summary(seen))
			require.NoError(t, c.WaitDurable(context.Background()))
			crash(t, c)

			restore(t, dir, image)
			d := openDurable(t, dir, Config{})
			defer d.Close()
			// New changes take the numbers the lost one had, and more.
			putTags(t, d, "p", []string{"c"}, engine.Tags{"status": "new"})
			putTags(t, d, "p", []string{"d"}, engine.Tags{"status": "new"})
			got := changed(t, d, "p", seen.Cursor)
			assert.True(t, got.Reset, "a cursor past what the log kept: %v", summary(got))
			assert.Equal(t, []string{"a=one", "c=new", "d=new"}, summary(got))
			// The cursor from before the loss saw only what was kept.
			got = changed(t, d, "p", before)
			assert.False(t, got.Reset)
			assert.Equal(t, []string{"c=new", "d=new"}, summary(got))
		})
	}
}
