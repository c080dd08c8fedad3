package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/hostid"
	"github.com/tqgo/tq/internal/testenv"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/transport/rdma"
)

// TestMultiHostRehearsal runs a cluster of four hosts, each a network
// namespace with its own host identity ($TQ_HOST_ID) on one bridge: the
// controller on host 0, a storage unit on every host, clients on every
// host. It checks what a cluster user relies on:
//   - local-first writes stay on the writer's host, reached through
//     shared memory;
//   - reads of other hosts' cells cross the network: over TCP, and over
//     the emulated RDMA device for the host that forces it (when this
//     build has the RDMA transport);
//   - a host that drops off the network turns its cells into
//     engine.ErrLost for readers elsewhere, nothing waits on it for long,
//     and the other hosts keep writing and reading.
func TestMultiHostRehearsal(t *testing.T) {
	bin := tqBinary(t)
	const nHosts = 4
	h := testenv.NewHosts(t, nHosts)
	const token = "multihost-rehearsal-token"
	ctrl := startServe(t, h.In(0), bin, "--role", "controller", "--listen", h.IPs[0]+":7370",
		"--socket-dir", t.TempDir(), "--token", token, "--heartbeat", "200ms")
	caddr := ctrl.addr("tcp")
	var rdmaArgs []string
	if rdma.Supported {
		rdmaArgs = []string{"--rdma-device", "emu0"}
	}
	for i := range nHosts {
		startServe(t, h.In(i), bin, append([]string{"--role", "unit", "--controller", caddr,
			"--unit-listen", h.IPs[i] + ":0", "--socket-dir", t.TempDir(), "--token", token,
			"--capacity", "64MiB", "--heartbeat", "200ms"}, rdmaArgs...)...)
	}
	env := func(i int, extra ...string) []string {
		return append([]string{"TQ_ADDR=" + caddr, "TQ_TOKEN=" + token, "TQ_PART=" + part(i)}, extra...)
	}

	var writers []*exec.Cmd
	for i := range nHosts {
		writers = append(writers, helper(t, h.In(i), "mh-write", env(i)...))
	}
	runHelpers(t, writers...)

	var readers []*exec.Cmd
	for i := range nHosts {
		var others []string
		for j := range nHosts {
			if j != i {
				others = append(others, part(j))
			}
		}
		extra := []string{"TQ_READ=" + strings.Join(others, ",")}
		if i == 1 && rdma.Supported {
			extra = append(extra, "TQ_TRANSPORT=rdma", "TQ_RDMA_DEVICE=emu0", "TQ_WANT_TRANSPORT=rdma")
		}
		readers = append(readers, helper(t, h.In(i), "mh-read", env(i, extra...)...))
	}
	runHelpers(t, readers...)

	// Host 3 drops off the network: its unit stops answering and its
	// heartbeats stop reaching the controller.
	h.Unplug(t, 3)
	runHelpers(t, helper(t, h.In(1), "mh-lost", env(1, "TQ_LOST="+part(3), "TQ_READ="+part(0)+","+part(2))...))
}

func part(host int) string { return fmt.Sprintf("host%d", host) }

// multiHostHelper is the body of the rehearsal's client processes.
func multiHostHelper(ctx context.Context, t *testing.T, c *client.Client, kv *kvapi.KV, role string) {
	me := hostid.ID()
	local := map[engine.UnitID]bool{}
	for _, u := range c.Units() {
		if u.Host() == me {
			local[u.ID()] = true
		}
	}
	keys := helperKeys(0, helperRows)
	switch role {
	case "mh-write":
		if len(local) != 1 {
			t.Fatalf("host %s: %d local units among %d, want 1", me, len(local), len(c.Units()))
		}
		for _, u := range c.Units() {
			if local[u.ID()] && u.Transport() != "shm" {
				t.Fatalf("host %s: local unit %d reached over %q, want shm", me, u.ID(), u.Transport())
			}
		}
		p := os.Getenv("TQ_PART")
		if _, err := kv.BatchPut(ctx, p, keys, helperBatch(0, helperRows), nil); err != nil {
			t.Fatalf("put %s: %v", p, err)
		}
		meta, b, err := getRows(ctx, c, p)
		if err != nil {
			t.Fatalf("get %s: %v", p, err)
		}
		checkRows(t, p, b)
		for f, cells := range meta.Cells {
			for r, cell := range cells {
				if !local[cell.Unit] {
					t.Fatalf("host %s: %s row %d field %s went to unit %d, not this host's", me, p, r, f, cell.Unit)
				}
			}
		}
	case "mh-read":
		want := os.Getenv("TQ_WANT_TRANSPORT")
		for _, u := range c.Units() {
			tr := u.Transport()
			switch {
			case local[u.ID()]:
			case want != "" && tr != want:
				t.Fatalf("host %s: unit %d on host %s reached over %q, want %q", me, u.ID(), u.Host(), tr, want)
			case tr != "tcp" && tr != "rdma":
				t.Fatalf("host %s: unit %d on host %s reached over %q, want a network transport", me, u.ID(), u.Host(), tr)
			}
		}
		readParts(ctx, t, c, os.Getenv("TQ_READ"))
	case "mh-lost":
		lost := os.Getenv("TQ_LOST")
		start := time.Now()
		for {
			_, b, err := getRows(ctx, c, lost)
			if err == nil {
				b.Release()
			}
			if errors.Is(err, engine.ErrLost) {
				fmt.Printf("host %s: %s reads as lost after %v: %v\n", me, lost, time.Since(start).Round(time.Millisecond), err)
				break
			}
			if err != nil && !errors.Is(err, engine.ErrUnavailable) {
				t.Fatalf("read of a gone host's cells: %v, want an error wrapping %v", err, engine.ErrLost)
			}
			if err == nil {
				t.Fatalf("read %s from a host that is off the network: no error", lost)
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("reads of a gone host's cells still fail with %v after 30 s, not %v", err, engine.ErrLost)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The rest of the cluster goes on: writes stay local, other
		// hosts' cells read back.
		p := os.Getenv("TQ_PART") + "-after"
		if _, err := kv.BatchPut(ctx, p, keys, helperBatch(0, helperRows), nil); err != nil {
			t.Fatalf("put after a host left: %v", err)
		}
		readParts(ctx, t, c, os.Getenv("TQ_READ")+","+p)
	default:
		t.Fatalf("unknown helper role %q", role)
	}
}

// getRows reads every field of the rows mh-write put into p.
func getRows(ctx context.Context, c *client.Client, p string) (*engine.BatchMeta, *engine.Batch, error) {
	meta, err := c.MetaByKeys(ctx, p, helperKeys(0, helperRows), nil, false)
	if err != nil {
		return nil, nil, err
	}
	b, err := c.Get(ctx, meta)
	return meta, b, err
}

func readParts(ctx context.Context, t *testing.T, c *client.Client, parts string) {
	for p := range strings.SplitSeq(parts, ",") {
		_, b, err := getRows(ctx, c, p)
		if err != nil {
			t.Fatalf("host %s: read %s: %v", hostid.ID(), p, err)
		}
		checkRows(t, p, b)
	}
}

// checkRows checks b against what mh-write put.
func checkRows(t *testing.T, p string, b *engine.Batch) {
	defer b.Release()
	want := helperBatch(0, helperRows)
	for _, f := range want.Fields() {
		if got := b.Col(f.Name); got == nil || !got.Equal(f.Col) {
			t.Fatalf("%s field %s differs from what was put", p, f.Name)
		}
	}
	if n := len(b.Fields()); n != len(want.Fields()) {
		t.Fatalf("%s: %d fields, want %d", p, n, len(want.Fields()))
	}
}
