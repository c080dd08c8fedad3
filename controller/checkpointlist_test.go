package controller

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"context"
	"github.com/google/go-cmp/cmp"
	"github.com/tqgo/tq/engine"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestCheckpointsListingOffTheLoop: CHECKPOINTS reads the checkpoint
// directory and every checkpoint's state header. A slow listing must not
// hold up the connection's other requests, nor those of other
// connections on the same event loop: a PING and a PARTITIONS are
// answered while it is stuck.
func TestCheckpointsListingOffTheLoop(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	testHookListing = func() {
		started <- struct{}{}
		<-release
	}
	t.Cleanup(func() { testHookListing = nil })
	root := t.TempDir()
	_, addr := startServer(t, newController(t, Config{}), ServerConfig{CheckpointDir: root, Loops: 1}, "unix")
	c := dialRaw(t, addr, "")
	other := dialRaw(t, addr, "")
	listed := make(chan error, 1)
	go func() {
		var list wirepb.CheckpointsReply
		listed <- do(c, wire.OpCheckpoints, &wirepb.Empty{}, &list)
	}()
	<-started
	defer close(release)
	for _, tc := range []struct {
		name string
		conn *wire.Conn
		op   wire.Op
	}{
		{"ping, same connection", c, wire.OpPing},
		{"partitions, same connection", c, wire.OpPartitions},
		{"ping, other connection", other, wire.OpPing},
		{"partitions, other connection", other, wire.OpPartitions},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		if tc.op == wire.OpPing {
			err = tc.conn.Do(ctx, wire.OpPing, &wirepb.Ping{}, nil, &wirepb.Ping{}, nil)
		} else {
			err = tc.conn.Do(ctx, tc.op, &wirepb.Empty{}, nil, &wirepb.PartitionsReply{}, nil)
		}
		cancel()
		if err != nil {
			t.Errorf("%s while a listing is stuck: got %v, want an answer", tc.name, err)
		}
	}
	select {
	case err := <-listed:
		t.Fatalf("CHECKPOINTS answered before its listing ended: %v", err)
	default:
	}
	release <- struct{}{} // not closed yet: the deferred close follows
	if err := <-listed; err != nil {
		t.Fatalf("CHECKPOINTS: %v", err)
	}
}

// listCheckpoints serves a controller with the checkpoints in root and
// lists them in one CHECKPOINTS call: the connection, the reply, and
// each checkpoint's Unusable by name.
func listCheckpoints(t *testing.T, root string) (*wire.Conn, *wirepb.CheckpointsReply, map[string]string) {
	t.Helper()
	_, addr := startServer(t, newController(t, Config{}), ServerConfig{CheckpointDir: root}, "unix")
	c := dialRaw(t, addr, "")
	var list wirepb.CheckpointsReply
	if err := do(c, wire.OpCheckpoints, &wirepb.Empty{}, &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ci := range list.Checkpoints {
		got[ci.Name] = ci.Unusable
	}
	return c, &list, got
}

// TestCheckpointsMarkUnusable: a checkpoint whose state another build
// wrote (another state version) is listed, marked with why a load would
// refuse it; one this build loads is not marked, and loads.
func TestCheckpointsMarkUnusable(t *testing.T) {
	root := t.TempDir()
	for name, version := range map[string]uint32{"ours": stateVersion, "future": stateVersion + 1} {
		if err := os.Mkdir(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
		writeStateFile(t, filepath.Join(root, name, stateFile), &wirepb.StateHeader{Format: stateFormat, Version: version, NextGen: 1, NextUnitId: 1}, nil, nil, nil)
	}
	c, list, got := listCheckpoints(t, root)
	want := map[string]string{"ours": "", "future": fmt.Sprintf("state version %d, this build reads %d: %v", stateVersion+1, stateVersion, engine.ErrNotSupported)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("listed (name: unusable) (-want +got):\n%s", diff)
	}
	// What the list offers loads; what it marks is refused.
	for _, ci := range list.Checkpoints {
		err := do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: ci.Name}, nil)
		switch {
		case ci.Unusable == "" && err != nil:
			t.Errorf("load of %s, listed as loadable: %v", ci.Name, err)
		case ci.Unusable != "" && codeOf(err) != wirepb.Code_CODE_NOT_SUPPORTED:
			t.Errorf("load of %s, listed as unusable: got %v, want CODE_NOT_SUPPORTED", ci.Name, err)
		}
	}
}

// TestCheckpointsPaged: CHECKPOINTS answers a page at a time, bounded by
// its limit and by bytes (a checkpoint's metadata may take 64 KiB: a
// directory of thousands made one reply past the frame limit), and the
// pages, asked for after the last name of each, list every checkpoint
// once, by name.
func TestCheckpointsPaged(t *testing.T) {
	root := t.TempDir()
	var names []string
	for i := range 7 {
		name := fmt.Sprintf("ck-%d", i)
		names = append(names, name)
		if err := os.Mkdir(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
		meta := []byte(fmt.Sprintf(`{"pad": %q}`, strings.Repeat("x", 1000)))
		writeStateFile(t, filepath.Join(root, name, stateFile), &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextGen: 1, NextUnitId: 1, UserMetadata: meta}, nil, nil, nil)
	}
	_, addr := startServer(t, newController(t, Config{}), ServerConfig{CheckpointDir: root}, "unix")
	c := dialRaw(t, addr, "")
	list := func(after string, limit uint32) (got []string, next string) {
		t.Helper()
		var r wirepb.CheckpointsReply
		if err := do(c, wire.OpCheckpoints, &wirepb.CheckpointsRequest{After: after, Limit: limit}, &r); err != nil {
			t.Fatal(err)
		}
		for _, ci := range r.Checkpoints {
			got = append(got, ci.Name)
		}
		return got, r.NextAfter
	}
	got, next := list("", 3)
	if diff := cmp.Diff(names[:3], got); diff != "" || next != "ck-2" {
		t.Errorf("limit 3: next %q, want ck-2; names (-want +got):\n%s", next, diff)
	}
	got, next = list("ck-4", 3)
	if diff := cmp.Diff(names[5:], got); diff != "" || next != "" {
		t.Errorf("after ck-4: next %q, want none; names (-want +got):\n%s", next, diff)
	}
	// By bytes: about two entries a page.
	old := checkpointsPageBytes
	checkpointsPageBytes = 2500
	t.Cleanup(func() { checkpointsPageBytes = old })
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > len(names) {
			t.Fatalf("no end after %d pages: %v", pages, all)
		}
		got, next := list(after, 0)
		if len(got) > 2 {
			t.Errorf("a page of %d entries of over 1000 bytes each, bounded to 2500 bytes", len(got))
		}
		all = append(all, got...)
		if next == "" {
			break
		}
		after = next
	}
	if diff := cmp.Diff(names, all); diff != "" {
		t.Errorf("every page (-want +got):\n%s", diff)
	}
}

// TestCheckpointsListDamaged: a checkpoint whose state file is there but
// damaged (a copy cut short) is listed, marked with why a load refuses
// it, not left out as if it were not there; a directory with no state
// file is no checkpoint and is left out.
func TestCheckpointsListDamaged(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"ours", "damaged", "stray"} {
		if err := os.Mkdir(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeStateFile(t, filepath.Join(root, "ours", stateFile), &wirepb.StateHeader{Format: stateFormat, Version: stateVersion, NextGen: 1, NextUnitId: 1}, nil, nil, nil)
	b, err := os.ReadFile(filepath.Join(root, "ours", stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "damaged", stateFile), b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	c, list, got := listCheckpoints(t, root)
	for _, ci := range list.Checkpoints {
		if ci.Name == "damaged" && ci.SavedUnixMs != 0 {
			t.Errorf("damaged: saved_unix_ms %d: want 0 (not known)", ci.SavedUnixMs)
		}
	}
	if _, ok := got["damaged"]; !ok {
		t.Fatalf("listed %v: the damaged checkpoint is left out", got)
	}
	if u := got["damaged"]; !strings.Contains(u, stateFile) || !strings.Contains(u, engine.ErrCorrupt.Error()) {
		t.Errorf("damaged: unusable %q: want why, naming %s and %v", u, stateFile, engine.ErrCorrupt)
	}
	if u, ok := got["ours"]; !ok || u != "" {
		t.Errorf("ours: listed %v, unusable %q: want listed, usable", ok, u)
	}
	if _, ok := got["stray"]; ok {
		t.Errorf("a directory without %s is listed", stateFile)
	}
	if err := do(c, wire.OpLoadCheckpoint, &wirepb.CheckpointRequest{Name: "damaged"}, nil); err == nil {
		t.Error("the damaged checkpoint loads")
	}
}

// TestCheckpointsListLinkedCheckpoints: a checkpoint that is a symbolic
// link to a checkpoint directory elsewhere (moved to a bigger disk) is
// listed, as a load finds it; stray entries beside it are not: a link to
// a file, a dangling link, a file, a named pipe. The listing skipped
// every link: tq checkpoint list did not show a checkpoint that tq
// checkpoint load NAME loaded.
func TestCheckpointsListLinkedCheckpoints(t *testing.T) {
	root, elsewhere := t.TempDir(), t.TempDir()
	c := newController(t, DefaultConfig())
	insert(t, c, "p", 1, "x")
	require.NoError(t, c.Save(filepath.Join(elsewhere, "moved")))
	require.NoError(t, c.Save(filepath.Join(root, "here")))
	require.NoError(t, os.Symlink(filepath.Join(elsewhere, "moved"), filepath.Join(root, "linked")))
	require.NoError(t, os.Symlink(filepath.Join(elsewhere, "moved", stateFile), filepath.Join(root, "to-a-file")))
	require.NoError(t, os.Symlink(filepath.Join(elsewhere, "gone"), filepath.Join(root, "dangling")))
	require.NoError(t, os.WriteFile(filepath.Join(root, "a-file"), []byte("x"), 0o600))
	require.NoError(t, unix.Mkfifo(filepath.Join(root, "a-pipe"), 0o600))
	s := NewServer(c, ServerConfig{CheckpointDir: root})
	t.Cleanup(func() { s.Close() })
	list, err := s.Checkpoints()
	require.NoError(t, err)
	var names []string
	for _, ci := range list {
		assert.Empty(t, ci.Unusable, ci.Name)
		names = append(names, ci.Name)
	}
	assert.Equal(t, []string{"here", "linked"}, names)
	require.NoError(t, s.LoadCheckpoint(context.Background(), "linked"))

	// A save of that name replaces the link, not what it names.
	insert(t, c, "q", 1, "x")
	_, err = s.SaveCheckpoint(context.Background(), "linked", nil)
	require.NoError(t, err)
	fi, err := os.Lstat(filepath.Join(root, "linked"))
	require.NoError(t, err)
	assert.True(t, fi.IsDir(), "linked is %v", fi.Mode())
	d := newController(t, DefaultConfig())
	_, err = d.Load(filepath.Join(elsewhere, "moved"))
	require.NoError(t, err)
	assert.Equal(t, []string{"p"}, d.Partitions(), "what the link named")
}
