package client_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/transport/shm"
	"github.com/tqgo/tq/wire"
)

var reserveWords = []string{"alpha", "", "gamma ray", "δ"}

func reserveSpecs() []client.FieldSpec {
	lens := make([]int, len(reserveWords))
	for i, w := range reserveWords {
		lens[i] = len(w)
	}
	return []client.FieldSpec{
		{Name: "x", DType: engine.Float32, Shape: engine.Shape{3}},
		{Name: "s", RowBytes: lens},
	}
}

// fillReserved writes row i of x as {i, i+0.5, i+0.25} and the words into s.
func fillReserved(t *testing.T, pb *client.PutBuffer) []float32 {
	t.Helper()
	x, err := engine.Values[float32](pb.Column("x"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(x) / 3 {
		x[3*i], x[3*i+1], x[3*i+2] = float32(i), float32(i)+0.5, float32(i)+0.25
	}
	s := pb.Column("s")
	offs := s.Offsets()
	for i, w := range reserveWords {
		copy(s.Data()[offs[i]:offs[i+1]], w)
	}
	return slices.Clone(x)
}

// reserveRoundTrip inserts rows, fills them through a reserved put, commits
// and reads them back.
func reserveRoundTrip(t *testing.T, c *client.Client) {
	t.Helper()
	ctx := context.Background()
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := c.ReservePut(ctx, meta, reserveSpecs()...)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pb.Unit().(client.Reserver); !ok {
		t.Fatalf("unit %T is not a Reserver", pb.Unit())
	}
	wantX := fillReserved(t, pb)
	out, err := pb.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pb.Column("x") != nil {
		t.Error("Column after Commit is not nil")
	}
	if _, err := pb.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("second Commit: %v, want ErrInvalid", err)
	}
	if err := pb.Abort(ctx); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	if out.Schema["x"].DType != engine.Float32 || out.Schema["s"].DType != engine.Bytes {
		t.Fatalf("schema %+v", out.Schema)
	}
	b, err := c.Get(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	gotX, err := engine.Values[float32](b.Col("x"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotX, wantX) || !b.Col("x").Shape().Equal(engine.Shape{3}) {
		t.Errorf("x = %v shape %v, want %v shape [3]", gotX, b.Col("x").Shape(), wantX)
	}
	gotS, err := b.Col("s").Strings()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gotS, reserveWords) {
		t.Errorf("s = %q, want %q", gotS, reserveWords)
	}
	// The rows are produced: a fetch sees them.
	m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Fields: []string{"x", "s"}, BatchSize: len(reserveWords), Task: "t"})
	if err != nil || m.Len() != len(reserveWords) {
		t.Fatalf("fetch after commit: %v rows, %v", m.Len(), err)
	}
}

func TestReservePutCommit(t *testing.T) {
	e := newEmbedded(t, client.LocalFirst, 2)
	reserveRoundTrip(t, e.Client)
}

func TestReservePutAbort(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	base := e.Units[0].Stats().Used
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := c.ReservePut(ctx, meta, reserveSpecs()...)
	if err != nil {
		t.Fatal(err)
	}
	if e.Units[0].Stats().Used == base {
		t.Fatal("nothing reserved")
	}
	fillReserved(t, pb)
	if err := pb.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pb.Abort(ctx); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if _, err := pb.Commit(ctx); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("Commit after Abort: %v, want ErrInvalid", err)
	}
	if st := e.Units[0].Stats(); st.Used != base || st.OpenReservations != 0 {
		t.Errorf("after Abort: used %d (baseline %d), %d open reservations", st.Used, base, st.OpenReservations)
	}
	m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Fields: []string{"x", "s"}, BatchSize: 1, Task: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != 0 {
		t.Errorf("fetch after Abort returned %d rows, want 0", m.Len())
	}
}

func TestReservePutInvalid(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c := e.Client
	if _, err := c.PutNew(ctx, "p", ints(t, "x", []int64{1, 2})); err != nil {
		t.Fatal(err)
	}
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.ForceFetch, Fields: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	base := e.Units[0].Stats()
	twoParts := meta.Clone()
	twoParts.Partitions[1] = "q"
	for _, tc := range []struct {
		name   string
		meta   *engine.BatchMeta
		fields []client.FieldSpec
		want   error
	}{
		{"dtype conflict", meta, []client.FieldSpec{{Name: "x", DType: engine.Float32}}, engine.ErrDTypeMismatch},
		{"opaque over dense", meta, []client.FieldSpec{{Name: "x", RowBytes: []int{1, 2}}}, engine.ErrDTypeMismatch},
		{"no fields", meta, nil, engine.ErrInvalid},
		{"empty meta", &engine.BatchMeta{}, []client.FieldSpec{{Name: "y", DType: engine.Int64}}, engine.ErrInvalid},
		{"two layouts", meta, []client.FieldSpec{{Name: "y", DType: engine.Int64, Shape: engine.Shape{1}, Shapes: []engine.Shape{{1}, {2}}}}, engine.ErrInvalid},
		{"row count", meta, []client.FieldSpec{{Name: "y", DType: engine.Int64, Shapes: []engine.Shape{{1}}}}, engine.ErrInvalid},
		{"duplicate", meta, []client.FieldSpec{{Name: "y", DType: engine.Int64}, {Name: "y", DType: engine.Int64}}, engine.ErrInvalid},
		{"dense bytes", meta, []client.FieldSpec{{Name: "y", DType: engine.Bytes}}, engine.ErrInvalid},
		{"two partitions", twoParts, []client.FieldSpec{{Name: "y", DType: engine.Int64}}, engine.ErrInvalid},
		// Sizes whose products would wrap around.
		{"cell too large", meta, []client.FieldSpec{{Name: "y", DType: engine.Int64, Shape: engine.Shape{1 << 30, 1 << 30, 16}}}, engine.ErrInvalid},
		{"rows too large", meta, []client.FieldSpec{{Name: "y", DType: engine.Complex128, Shape: engine.Shape{1 << 36}}}, engine.ErrInvalid},
		{"ragged rows too large", meta, []client.FieldSpec{{Name: "y", DType: engine.Int16, Shapes: []engine.Shape{{1 << 39}, {1 << 39}}}}, engine.ErrInvalid},
		{"opaque rows too large", meta, []client.FieldSpec{{Name: "y", RowBytes: []int{1 << 62, 1 << 62}}}, engine.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.ReservePut(ctx, tc.meta, tc.fields...); !errors.Is(err, tc.want) {
				t.Fatalf("ReservePut: %v, want %v", err, tc.want)
			}
			if st := e.Units[0].Stats(); st.Used != base.Used || st.OpenReservations != 0 {
				t.Errorf("after a rejected ReservePut: used %d (baseline %d), %d open reservations", st.Used, base.Used, st.OpenReservations)
			}
		})
	}
	// Overwriting the existing field frees the cells it replaces.
	pb, err := c.ReservePut(ctx, meta, client.FieldSpec{Name: "x", DType: engine.Int64})
	if err != nil {
		t.Fatal(err)
	}
	x, err := engine.Values[int64](pb.Column("x"))
	if err != nil {
		t.Fatal(err)
	}
	copy(x, []int64{7, 8})
	out, err := pb.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Get(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(t, b, "x"); !slices.Equal(got, []int64{7, 8}) {
		t.Errorf("x = %v, want [7 8]", got)
	}
	if st := e.Units[0].Stats(); st.Used != base.Used {
		t.Errorf("after overwrite: used %d, want %d", st.Used, base.Used)
	}
}

// noReserve hides a unit's Reserver implementation.
type noReserve struct{ client.DataUnit }

func TestReservePutNotSupported(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t, client.LocalFirst, 1)
	c, err := client.New(embedded.Meta(e.Controller), []client.DataUnit{noReserve{embedded.Unit(e.Units[0])}}, client.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	base := e.Units[0].Stats().Used
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 2, Fields: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReservePut(ctx, meta, client.FieldSpec{Name: "x", DType: engine.Float32}); !errors.Is(err, engine.ErrNotSupported) {
		t.Fatalf("ReservePut on a unit without Reserver: %v, want ErrNotSupported", err)
	}
	if used := e.Units[0].Stats().Used; used != base {
		t.Errorf("used %d after ReservePut was refused, baseline %d", used, base)
	}
}

// TestReservePutShm fills a unit served in this process over shared
// memory: the client writes the unit's memory mapped read-write.
func TestReservePutShm(t *testing.T) {
	c, u := shmClient(t, client.DefaultConfig())
	reserveRoundTrip(t, c)

	// An aborted shm reservation gives its space back.
	ctx := context.Background()
	base := u.Stats().Used
	meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := c.ReservePut(ctx, meta, reserveSpecs()...)
	if err != nil {
		t.Fatal(err)
	}
	fillReserved(t, pb)
	if err := pb.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if st := u.Stats(); st.Used != base || st.OpenReservations != 0 {
		t.Errorf("after Abort: used %d (baseline %d), %d open reservations", st.Used, base, st.OpenReservations)
	}
}

// shmClient serves a fresh unit in this process over its unix and fd
// sockets and returns a client reaching it over shared memory.
func shmClient(t *testing.T, cfg client.Config) (*client.Client, *storage.Unit) {
	t.Helper()
	scfg := storage.DefaultConfig()
	scfg.Capacity = 32 << 20
	scfg.SegmentSize = 8 << 20
	return shmClientOn(t, cfg, scfg)
}

// shmClientOn is shmClient with the unit's config.
func shmClientOn(t *testing.T, cfg client.Config, scfg storage.Config) (*client.Client, *storage.Unit) {
	t.Helper()
	return shmClientServed(t, cfg, scfg, storage.ServerConfig{})
}

// shmClientServed is shmClientOn with the unit's server config.
func shmClientServed(t *testing.T, cfg client.Config, scfg storage.Config, srvcfg storage.ServerConfig) (*client.Client, *storage.Unit) {
	t.Helper()
	u, err := storage.NewUnit(7, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	srv := storage.NewServer(u, srvcfg)
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "unit.sock"))
	if err != nil {
		t.Fatal(err)
	}
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "unit.sock.shm"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{}, 2)
	go func() { srv.Serve(l); served <- struct{}{} }()
	srv.RegisterShm(fl)
	go func() { srv.ServeShm(fl); served <- struct{}{} }()
	t.Cleanup(func() {
		srv.Close()
		<-served
		<-served
	})
	tr := shm.New(shm.DefaultConfig())
	t.Cleanup(func() { tr.Close() })
	conn, err := tr.DialConn(t.Context(), engine.PeerInfo{Unit: u.ID(), Addr: wire.FormatAddr("unix", l.Addr().String())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := client.New(embedded.Meta(newController(t)), []client.DataUnit{client.ShmUnit(u.ID(), client.HostID(), conn)}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, u
}

// reserveClients are the units a reserved put fills in place, each with
// the unit's config: one in this process, and one over shared memory.
var reserveClients = []struct {
	name   string
	client func(*testing.T, storage.Config) (*client.Client, *storage.Unit)
}{
	{"local", localClientOn},
	{"shm", func(t *testing.T, scfg storage.Config) (*client.Client, *storage.Unit) {
		return shmClientOn(t, client.DefaultConfig(), scfg)
	}},
}

// localClientOn returns the client of an embedded cluster of one unit
// with config scfg, and the unit.
func localClientOn(t *testing.T, scfg storage.Config) (*client.Client, *storage.Unit) {
	t.Helper()
	cfg := embedded.DefaultConfig()
	cfg.Units, cfg.Storage = 1, scfg
	e, err := embedded.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e.Client, e.Units[0]
}

// A reserved put filled for longer than the unit's reserve timeout can no
// longer commit, and the unit keeps its extent for it meanwhile: the rest
// of the slow fill never lands in the memory of a put made in between.
// (The unit of this process used to free the extent at the timeout.)
func TestReservePutSlowerThanTheReserveTimeout(t *testing.T) {
	for _, rc := range reserveClients {
		t.Run(rc.name, func(t *testing.T) {
			scfg := storage.DefaultConfig()
			scfg.Capacity, scfg.SegmentSize = 1<<20, 1<<20
			scfg.ReserveTimeout = 50 * time.Millisecond
			c, u := rc.client(t, scfg)
			ctx := context.Background()
			insert := func() *engine.BatchMeta {
				m, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 1, Fields: []string{"s"}})
				require.NoError(t, err)
				return m
			}

			const n = 4096
			pb, err := c.ReservePut(ctx, insert(), client.FieldSpec{Name: "s", RowBytes: []int{n}})
			require.NoError(t, err)
			buf := pb.Column("s").Data()
			copy(buf[:n/2], strings.Repeat("X", n/2)) // the first half of a slow fill
			require.Eventually(t, func() bool { return u.Stats().OpenReservations == 0 }, 10*time.Second, time.Millisecond,
				"the unit times the reservation out")

			want := strings.Repeat("A", n)
			col, err := engine.NewOpaque([]int{0, n}, []byte(want))
			require.NoError(t, err)
			out, err := c.Put(ctx, engine.MustBatch(engine.Field{Name: "s", Col: col}), insert())
			require.NoError(t, err)
			copy(buf[n/2:], strings.Repeat("X", n/2)) // the rest of the slow fill

			_, err = pb.Commit(ctx)
			require.ErrorIs(t, err, engine.ErrInvalid, "the slow put outlived its reservation")
			got, err := c.Get(ctx, out)
			require.NoError(t, err)
			assert.Equal(t, want, string(got.Col("s").RowBytes(0)), "the other put's bytes")
			got.Release()
			assert.Eventually(t, func() bool { return u.Stats().Extents == 1 }, 10*time.Second, time.Millisecond,
				"the slow put's extent is given back")
		})
	}
}

// A reserved put dropped without Commit or Abort gives its extents back
// once the garbage collector finds it; one that ended is left alone.
func TestReservePutDroppedIsAborted(t *testing.T) {
	for _, rc := range reserveClients {
		t.Run(rc.name, func(t *testing.T) {
			scfg := storage.DefaultConfig()
			scfg.Capacity, scfg.SegmentSize = 8<<20, 8<<20
			c, u := rc.client(t, scfg)
			ctx := context.Background()
			meta, err := c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
			require.NoError(t, err)
			pb, err := c.ReservePut(ctx, meta, reserveSpecs()...)
			require.NoError(t, err)
			fillReserved(t, pb)
			_, err = pb.Commit(ctx)
			require.NoError(t, err)
			committed := u.Stats()

			// Reserved on rows the first put did not make, and dropped.
			meta, err = c.GetMeta(ctx, client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: len(reserveWords), Fields: []string{"x", "s"}})
			require.NoError(t, err)
			_, err = c.ReservePut(ctx, meta, reserveSpecs()...)
			require.NoError(t, err)
			require.Equal(t, 1, u.Stats().OpenReservations)
			require.Eventually(t, func() bool {
				runtime.GC()
				st := u.Stats()
				return st.OpenReservations == 0 && st.Used == committed.Used
			}, 10*time.Second, 10*time.Millisecond, "the dropped buffer's extents are given back")
			assert.Equal(t, committed.Extents, u.Stats().Extents, "the committed put keeps its extents")
		})
	}
}

// A reserved put whose fields hold no bytes (every row empty), placed on
// a unit that cannot reserve (tcp, here a unit hiding Reserver), fails
// with ErrNotSupported at once, as a non-empty one does; it used to pick
// the same unit again until its context ended.
func TestReservePutZeroBytesNotSupportedReturns(t *testing.T) {
	e := newEmbedded(t, client.LocalFirst, 1)
	c, err := client.New(embedded.Meta(e.Controller), []client.DataUnit{noReserve{embedded.Unit(e.Units[0])}}, client.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	meta, err := c.GetMeta(context.Background(), client.MetaRequest{Partition: "p", Mode: client.Insert, BatchSize: 2, Fields: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []client.FieldSpec{
		{Name: "x", DType: engine.Float32, Shape: engine.Shape{0}},
		{Name: "x", RowBytes: []int{0, 0}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		_, err := c.ReservePut(ctx, meta, spec)
		cancel()
		if el := time.Since(start); el > time.Second {
			t.Errorf("ReservePut of %+v on a unit without Reserver took %v (spun until ctx ended): %v", spec, el, err)
		}
		if !errors.Is(err, engine.ErrNotSupported) {
			t.Errorf("ReservePut of %+v: %v, want ErrNotSupported", spec, err)
		}
	}
}
