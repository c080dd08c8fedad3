package bench

// Scaling curves between two processes: throughput against the number of
// fields and against the batch size, each point measured next to its
// physical baseline in the same iteration (a copy() of the same bytes for
// shm, a plain TCP stream between the same two processes for tcp); and
// control-plane operations per second against the number of concurrent
// clients. transport=tcp is what a client forced to "tcp" gets: the
// controller over loopback TCP and, the unit being on this host, its data
// over the unit's unix socket; so put/tcp_stream can exceed 1. Names are
// key=value so benchstat can lay the curves out, e.g.
//
//	go test -run '^$' -bench 'Scale' -count 3 ./bench | tee scale.txt
//	benchstat -col /fields -row /transport,/op scale.txt

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// scaleBytes is the payload of every point of the field-count curve, and
// of the largest batch of the batch-size curve.
const scaleBytes = 64 << 20

// scaleFieldsMiB sets the field-count curve's payload: 288 is the
// reference small workload's size (1024 rows), at which issue 5 states
// its 32-fields-vs-1 target.
var scaleFieldsMiB = flag.Int("scale.mib", scaleBytes>>20, "MiB per point of BenchmarkScaleFields")

// BenchmarkScaleFields puts and gets (into a reused buffer) 64 MiB
// (-scale.mib) as 1 to 32 fields of 1024 rows, over shm and tcp. Reports op_GB/s, the
// baseline's GB/s and base/op; the target is a flat curve (many fields
// cost no more per byte than one).
func BenchmarkScaleFields(b *testing.B) {
	caddr, raddr := benchServerFlags(b)
	clients := scaleClients(b, caddr)
	raw := dialRaw(b, raddr)
	total := int64(*scaleFieldsMiB) << 20
	bufs := newScaleBufs(total)
	const rows = 1024
	for _, fields := range []int{1, 2, 4, 8, 16, 32} {
		w := workload{fmt.Sprintf("fields%d", fields), rows, fields, int(total / 4 / rows / int64(fields))}
		batch, keys := w.make(b)
		for _, tr := range []string{client.TransportShm, client.TransportTCP} {
			for _, op := range []string{"put", "get_into"} {
				b.Run(fmt.Sprintf("transport=%s/op=%s/fields=%d", tr, op, fields), func(b *testing.B) {
					benchScalePoint(b, tr, op, w, batch, keys, clients[tr], raw, bufs)
				})
			}
		}
	}
}

// BenchmarkScaleBatch puts and gets (into a reused buffer) batches of 16
// to 4096 rows of 16 KiB (4 float32 fields of 1024 values), over shm and
// tcp, next to the baselines. Small batches show the per-call cost (round
// trips); large ones the per-byte cost.
func BenchmarkScaleBatch(b *testing.B) {
	caddr, raddr := benchServerFlags(b)
	clients := scaleClients(b, caddr)
	raw := dialRaw(b, raddr)
	bufs := newScaleBufs(scaleBytes)
	for _, rows := range []int{16, 64, 256, 1024, 4096} {
		w := workload{fmt.Sprintf("rows%d", rows), rows, 4, 1024}
		batch, keys := w.make(b)
		for _, tr := range []string{client.TransportShm, client.TransportTCP} {
			for _, op := range []string{"put", "get_into"} {
				b.Run(fmt.Sprintf("transport=%s/op=%s/rows=%d", tr, op, rows), func(b *testing.B) {
					benchScalePoint(b, tr, op, w, batch, keys, clients[tr], raw, bufs)
				})
			}
		}
	}
}

func scaleClients(b *testing.B, caddr string) map[string]*kvapi.KV {
	return map[string]*kvapi.KV{
		client.TransportShm: kvapi.New(connect(b, caddr, client.TransportShm, 0)),
		client.TransportTCP: kvapi.New(connect(b, caddr, client.TransportTCP, 0)),
	}
}

// scaleBufs are the prefaulted buffers the points share: where gets land,
// where the tcp baseline reads, and the copy baseline.
type scaleBufs struct {
	into, dst []byte
	cp        *copier
}

func newScaleBufs(n int64) *scaleBufs {
	s := &scaleBufs{into: make([]byte, n), dst: make([]byte, n), cp: newCopier(n)}
	for i := 0; i < int(n); i += 4096 {
		s.into[i], s.dst[i] = 1, 1
	}
	return s
}

// benchScalePoint times one op of w through kv and its baseline in the
// same iteration: put is BatchPut (then an untimed Clear), get_into is
// BatchGetInto of every field into a reused buffer.
func benchScalePoint(b *testing.B, tr, op string, w workload, batch *engine.Batch, keys []string, kv *kvapi.KV, raw *rawConn, bufs *scaleBufs) {
	ctx := context.Background()
	n := w.bytes()
	baseName := "tcp_stream"
	base := func() time.Duration {
		if op == "put" {
			return raw.write(batch)
		}
		return raw.read(bufs.dst[:n])
	}
	if tr == client.TransportShm {
		baseName = "memcpy"
		base = func() time.Duration { return bufs.cp.run(batch) }
	}
	const part = "scale"
	// Warm up: the unit's segments mapped and faulted, then as the op
	// wants them (absent for a put, present for a get).
	if _, err := kv.BatchPut(ctx, part, keys, batch, nil); err != nil {
		b.Fatal(err)
	}
	if op == "put" {
		if err := kv.Clear(ctx, part, keys); err != nil {
			b.Fatal(err)
		}
	}
	defer kv.Clear(ctx, part, keys)
	var s side
	b.SetBytes(n)
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		switch op {
		case "put":
			if _, err := kv.BatchPut(ctx, part, keys, batch, nil); err != nil {
				b.Fatal(err)
			}
			s.op += time.Since(t0)
			b.StopTimer()
			if err := kv.Clear(ctx, part, keys); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		case "get_into":
			got, err := kv.BatchGetInto(ctx, part, keys, bufs.into[:n])
			if err != nil {
				b.Fatal(err)
			}
			s.op += time.Since(t0)
			if got.Rows() != w.batch || got.NumFields() != w.fields {
				b.Fatalf("got %d rows × %d fields, want %d × %d", got.Rows(), got.NumFields(), w.batch, w.fields)
			}
		}
		s.base += base()
		s.n++
	}
	gbps := func(d time.Duration) float64 { return float64(n) * float64(s.n) / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(s.op), op+"_GB/s")
	b.ReportMetric(gbps(s.base), baseName+"_GB/s")
	b.ReportMetric(s.base.Seconds()/s.op.Seconds(), op+"/"+baseName)
	b.ReportMetric(float64(s.op.Microseconds())/float64(s.n), op+"_us")
}

// BenchmarkScaleClients runs a control-plane operation from 1 to 256
// concurrent clients, each with its own client.Client (its own controller
// and unit connections), and reports ops/s and latency percentiles:
// op=list lists a partition of one key (one controller round trip);
// op=kv_get is kv.BatchGet of one 8-byte value over tcp (a controller and
// a unit round trip); op=pingpong is the baseline, a 64-byte ping-pong on
// one plain TCP connection per client to the same server process.
func BenchmarkScaleClients(b *testing.B) {
	caddr, raddr := benchServerFlags(b)
	ctx := context.Background()
	counts := []int{1, 4, 16, 64, 256}
	maxClients := counts[len(counts)-1]
	var kvs []*kvapi.KV
	var pings []net.Conn
	owner := b
	for _, op := range []string{"list", "kv_get", "pingpong"} {
		for _, clients := range counts {
			b.Run(fmt.Sprintf("op=%s/clients=%d", op, clients), func(b *testing.B) {
				switch {
				case op == "pingpong":
					for len(pings) < maxClients {
						c, err := net.Dial("tcp", raddr)
						if err != nil {
							b.Fatal(err)
						}
						owner.Cleanup(func() { c.Close() })
						var hdr [9]byte
						hdr[0] = 'P'
						if _, err := c.Write(hdr[:]); err != nil {
							b.Fatal(err)
						}
						pings = append(pings, c)
					}
				case len(kvs) == 0:
					for range maxClients {
						c, err := connectOwned(owner, caddr, client.TransportTCP, 1)
						if err != nil {
							b.Fatal(err)
						}
						kvs = append(kvs, kvapi.New(c))
					}
					one := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("12345678")})})
					if _, err := kvs[0].Put(ctx, "one", "k", one, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				msgs := make([][]byte, clients)
				for w := range msgs {
					msgs[w] = make([]byte, 64)
				}
				wall, lats := runWorkers(b, clients, 1, func(w, _ int, lat latencies) error {
					t0 := time.Now()
					switch op {
					case "list":
						l, err := kvs[w].List(ctx, "one")
						if err != nil {
							return err
						}
						if len(l["one"]) != 1 {
							return fmt.Errorf("list of a one-key partition: %v", l)
						}
					case "kv_get":
						got, err := kvs[w].BatchGet(ctx, "one", []string{"k"}, "v")
						if err != nil {
							return err
						}
						v := string(got.Col("v").RowBytes(0))
						got.Release()
						if v != "12345678" {
							return fmt.Errorf("got %q, want 12345678", v)
						}
					case "pingpong":
						c := pings[w]
						if _, err := c.Write(msgs[w]); err != nil {
							return err
						}
						if _, err := io.ReadFull(c, msgs[w]); err != nil {
							return err
						}
					}
					lat.add(0, time.Since(t0))
					return nil
				})
				b.ReportMetric(float64(b.N)/wall.Seconds(), "ops/s")
				reportLatency(b, lats, 0, op)
			})
		}
	}
}
