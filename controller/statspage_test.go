package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// TestStatsPaged: STATS_PAGE answers the partitions' stats a page at a
// time, by name, bounded by its limit and by bytes; the pages, asked for
// after the last name of each, hold every partition once, each entry as
// STATS answers it for that partition. STATS naming one partition
// answers as before.
func TestStatsPaged(t *testing.T) {
	c := newController(t, Config{})
	var names []string
	for i := range 7 {
		name := fmt.Sprintf("p-%d", i)
		names = append(names, name)
		if _, err := c.Insert(name, i+1, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	page := func(after string, limit uint32) (got []*wirepb.PartitionStats, next string) {
		t.Helper()
		var r wirepb.StatsPageReply
		if err := do(conn, wire.OpStatsPage, &wirepb.StatsPageRequest{After: after, Limit: limit}, &r); err != nil {
			t.Fatal(err)
		}
		return r.Partitions, r.NextAfter
	}
	namesOf := func(ps []*wirepb.PartitionStats) (out []string) {
		for _, p := range ps {
			out = append(out, p.Partition)
		}
		return out
	}
	got, next := page("", 3)
	if diff := cmp.Diff(names[:3], namesOf(got)); diff != "" || next != "p-2" {
		t.Errorf("limit 3: next %q, want p-2; names (-want +got):\n%s", next, diff)
	}
	got, next = page("p-4", 3)
	if diff := cmp.Diff(names[5:], namesOf(got)); diff != "" || next != "" {
		t.Errorf("after p-4: next %q, want none; names (-want +got):\n%s", next, diff)
	}
	got, next = page("p-3x", 0) // after a name that is no partition
	if diff := cmp.Diff(names[4:], namesOf(got)); diff != "" || next != "" {
		t.Errorf("after p-3x: next %q, want none; names (-want +got):\n%s", next, diff)
	}
	for _, p := range got {
		var one wirepb.PartitionStats
		if err := do(conn, wire.OpStats, &wirepb.PartitionRequest{Partition: p.Partition}, &one); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&one, p, protocmp.Transform()); diff != "" {
			t.Errorf("%s: STATS_PAGE's entry differs from STATS (-stats +page):\n%s", p.Partition, diff)
		}
	}
	// By bytes: two entries a page.
	size := proto.Size(got[0]) + 8
	testStatsPageBytes.Store(int64(2*size + size/2))
	t.Cleanup(func() { testStatsPageBytes.Store(0) })
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > len(names) {
			t.Fatalf("no end after %d pages: %v", pages, all)
		}
		got, next := page(after, 0)
		if len(got) > 2 {
			t.Errorf("a page of %d entries of %d bytes each, bounded to %d bytes", len(got), size, testStatsPageBytes.Load())
		}
		all = append(all, namesOf(got)...)
		if next == "" {
			break
		}
		after = next
	}
	if diff := cmp.Diff(names, all); diff != "" {
		t.Errorf("every page (-want +got):\n%s", diff)
	}
	// No partitions: an empty page, no next.
	_, addr = startServer(t, newController(t, Config{}), ServerConfig{}, "unix")
	var r wirepb.StatsPageReply
	if err := do(dialRaw(t, addr, ""), wire.OpStatsPage, &wirepb.Empty{}, &r); err != nil || len(r.Partitions) != 0 || r.NextAfter != "" {
		t.Errorf("no partitions: got %v, %v; want an empty page", &r, err)
	}
}

// TestStatsPageHoldsNoLockAcrossThePage: while a STATS_PAGE waits for one
// partition's lock, the controller serves on — another partition's
// stats, a new partition (which takes the controller's lock to be
// listed) — and the page, once the lock is free, holds the partition.
func TestStatsPageHoldsNoLockAcrossThePage(t *testing.T) {
	c := newController(t, Config{})
	for _, name := range []string{"a", "b", "c"} {
		if _, err := c.Insert(name, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	p, _ := c.lock("b")
	paged := make(chan error, 1)
	var r wirepb.StatsPageReply
	go func() { paged <- do(conn, wire.OpStatsPage, &wirepb.StatsPageRequest{}, &r) }()
	select {
	case err := <-paged:
		p.mu.Unlock()
		t.Fatalf("the page was answered while b was locked: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	done := make(chan error, 1)
	go func() {
		if _, err := c.Insert("d", 1, nil); err != nil {
			done <- err
			return
		}
		_, err := c.Stats("a")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a new partition, or a's stats, waited for the page")
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case err := <-paged:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the page did not end once b was unlocked")
	}
	var got []string
	for _, st := range r.Partitions {
		got = append(got, st.Partition)
	}
	if got[1] != "b" {
		t.Errorf("page: got %v, want b among a, b, c(, d)", got)
	}
}

// TestStatsPageAcrossClearsAndCreates: the pages of 700 partitions (more
// than one look-up's batch), with a partition cleared ahead of the pages,
// one cleared behind them and one created ahead as they are read, and a
// pending one (its first request still making it): each page starts
// after the last name of the one before; together they hold once, in
// order, every partition there when its page was read, and never the
// pending one. PARTITIONS and a LIST_KEYS of every partition
// agree.
func TestStatsPageAcrossClearsAndCreates(t *testing.T) {
	c := newController(t, Config{})
	var names []string
	for i := range 700 {
		name := fmt.Sprintf("p-%04d", i)
		names = append(names, name)
		if _, err := c.CommitKeys(engine.KeysCommit{Partition: name, Keys: []string{"k"}, Tags: []engine.Tags{{"i": i}}}); err != nil {
			t.Fatal(err)
		}
	}
	pending, err := c.lockOrCreate("p-0350x")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.unlockNew(pending) })
	_, addr := startServer(t, c, ServerConfig{}, "unix")
	conn := dialRaw(t, addr, "")
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 200 {
			t.Fatalf("no end after %d pages", pages)
		}
		var r wirepb.StatsPageReply
		if err := do(conn, wire.OpStatsPage, &wirepb.StatsPageRequest{After: after, Limit: 7}, &r); err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Partitions {
			got = append(got, p.Partition)
		}
		if pages == 10 {
			if _, err := c.ClearPartition("p-0100"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ClearPartition("p-0003"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.CreatePartition("p-0500a"); err != nil {
				t.Fatal(err)
			}
		}
		if r.NextAfter == "" {
			break
		}
		after = r.NextAfter
	}
	want := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "p-0100" })
	want = slices.Insert(want, slices.Index(want, "p-0501"), "p-0500a")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
	want = slices.DeleteFunc(want, func(n string) bool { return n == "p-0003" })
	if diff := cmp.Diff(want, c.Partitions()); diff != "" {
		t.Errorf("partitions (-want +got):\n%s", diff)
	}
	var listed []string
	var cursor []byte
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("no end after %d pages of keys", pages)
		}
		page, next, err := c.ListKeysPage("", cursor, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, pk := range page {
			listed = append(listed, pk.Partition)
		}
		if next == nil {
			break
		}
		cursor = next
	}
	want = slices.DeleteFunc(want, func(n string) bool { return n == "p-0500a" }) // no keys
	if diff := cmp.Diff(want, listed); diff != "" {
		t.Errorf("partitions of the listed keys (-want +got):\n%s", diff)
	}
}
