package kvapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// newServedKV is newServed with the controller carrying small puts' and
// gets' bytes through the unit (as tq serve's controller does with the
// units of its process).
func newServedKV(t *testing.T) *servedCluster {
	t.Helper()
	return newServedKVWith(t, nil)
}

// newServedKVWith is newServedKV around ctrl (nil: a new one in memory).
func newServedKVWith(t *testing.T, ctrl *controller.Controller) *servedCluster {
	t.Helper()
	sc := newServed(t, ctrl)
	var units []*storage.Unit
	for _, id := range sc.ctrl.Units().Units() {
		units = append(units, sc.units[id.ID])
	}
	kvd, err := embedded.KVData(sc.ctrl, units...)
	require.NoError(t, err)
	sc.srv.ServeKV(kvd)
	return sc
}

// newServedDurableKV is newServedKV around a controller that keeps a
// journal, its config changed by change first (nil: none).
func newServedDurableKV(t *testing.T, change func(*controller.Config)) *servedCluster {
	t.Helper()
	cfg := controller.DefaultConfig()
	cfg.Dir = t.TempDir()
	if change != nil {
		change(&cfg)
	}
	ctrl, err := controller.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ctrl.Close() })
	require.True(t, ctrl.Durable())
	return newServedKVWith(t, ctrl)
}

func keyData(t *testing.T, kv *KV) client.KeyDataService {
	t.Helper()
	kd, ok := kv.Client().Meta().(client.KeyDataService)
	require.True(t, ok)
	return kd
}

// TestOneRoundTripKV puts and gets every kind of value through a
// controller that carries the bytes (KV_PUT, KV_GET), checks them against
// the two-round-trip path, and that large values and a controller without
// units of its own still take that path.
func TestOneRoundTripKV(t *testing.T) {
	ctx := t.Context()
	sc := newServedKV(t)
	kv := sc.kv
	ids := col(t, []int64{1, 2, 3, 4, 5, 6}, 3)
	logp := engine.RaggedOf([][]float32{{0.5}, {-1, 2, 3.25}})
	txt := engine.StringsOf([]string{"", "second \x00 row"})
	b := engine.MustBatch(engine.Field{Name: "ids", Col: ids}, engine.Field{Name: "logp", Col: logp}, engine.Field{Name: "txt", Col: txt})
	meta, err := kv.BatchPut(ctx, "p", []string{"a", "b"}, b, []engine.Tags{{"status": "new"}, nil})
	require.NoError(t, err)
	assert.Equal(t, []string{"ids", "logp", "txt"}, meta.Fields)
	assert.Equal(t, engine.Tags{"status": "new"}, meta.Tags[0], "tags come back with the put")
	assert.True(t, keyData(t, kv).KeyDataSupported())

	got, err := kv.BatchGet(ctx, "p", []string{"b", "a"})
	require.NoError(t, err)
	viaUnits, err := kv.BatchGetCopy(ctx, "p", []string{"b", "a"})
	require.NoError(t, err)
	for _, f := range []string{"ids", "logp", "txt"} {
		assert.True(t, got.Col(f).Equal(viaUnits.Col(f)), "field %s", f)
	}
	assert.Equal(t, "second \x00 row", got.Col("txt").String(0))
	got.Release()

	// What is not produced is named, as on the other path.
	_, err = kv.Put(ctx, "p", "c", engine.MustBatch(engine.Field{Name: "txt", Col: engine.StringsOf([]string{"only"})}), nil)
	require.NoError(t, err)
	_, err = kv.BatchGet(ctx, "p", []string{"a", "c"}, "ids")
	require.ErrorIs(t, err, engine.ErrNotReady)
	assert.Contains(t, err.Error(), `ids for keys ["c"]`)
	_, err = kv.BatchGet(ctx, "p", []string{"a", "zz"})
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), "zz")

	// A dtype the partition has otherwise is refused, and changes nothing.
	_, err = kv.Put(ctx, "p", "a", engine.MustBatch(engine.Field{Name: "ids", Col: col(t, []int32{9, 9, 9}, 3)}), nil)
	require.ErrorIs(t, err, engine.ErrDTypeMismatch)
	again, err := kv.BatchGetCopy(ctx, "p", []string{"a"}, "ids")
	require.NoError(t, err)
	v, _ := engine.Values[int64](again.Col("ids"))
	assert.Equal(t, []int64{1, 2, 3}, v)

	// A value over KVInlineMax goes to the unit, and reads back the same.
	big := bytes.Repeat([]byte{7}, client.KVInlineMax+1)
	_, err = kv.Put(ctx, "p", "big", engine.MustBatch(engine.Field{Name: "txt", Col: engine.BytesOf([][]byte{big})}), nil)
	require.NoError(t, err)
	gb, err := kv.BatchGet(ctx, "p", []string{"big"}, "txt")
	require.NoError(t, err)
	assert.True(t, bytes.Equal(big, gb.Col("txt").RowBytes(0)))
	gb.Release()

	// A controller without units of its own says so once; the client
	// goes on the two-round-trip way.
	plain := newServed(t, nil).kv
	_, err = plain.Put(ctx, "p", "x", engine.MustBatch(engine.Field{Name: "txt", Col: engine.StringsOf([]string{"y"})}), nil)
	require.NoError(t, err)
	assert.False(t, keyData(t, plain).KeyDataSupported())
	pg, err := plain.BatchGet(ctx, "p", []string{"x"})
	require.NoError(t, err)
	assert.Equal(t, "y", pg.Col("txt").String(0))
	pg.Release()
}

// TestKVPutHostile sends KV_PUT and KV_GET requests by hand that a client
// never would: each is refused naming what was wrong, nothing changes,
// and the connection goes on serving.
func TestKVPutHostile(t *testing.T) {
	sc := newServedKV(t)
	ctx := t.Context()
	c, _, err := wire.Dial(ctx, "unix://"+sc.sock, &wirepb.Hello{Role: "client", Name: "hostile"}, wire.ConnConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	opaque := wire.CommitFieldsToPB([]engine.CommitField{{Name: "v", DType: engine.Bytes, Kind: engine.Opaque}})
	put := func(keys []string, lens []uint64, payload []byte) error {
		req := &wirepb.KVPutRequest{Put: &wirepb.CommitKeysRequest{Partition: "p", Keys: keys, Fields: opaque},
			RowLens: []*wirepb.RowLens{{Lens: lens}}}
		return c.Do(ctx, wire.OpKVPut, req, net.Buffers{payload}, &wirepb.CommitKeysReply{}, nil)
	}

	err = put([]string{"big"}, []uint64{2 << 20}, make([]byte, 2<<20))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "exceeds 1048576")
	err = put([]string{"a", "b"}, []uint64{3, 3}, []byte("abcd"))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), `field "v"`)
	err = put([]string{"a"}, []uint64{1, 1}, []byte("ab"))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "2 row lengths for 1 keys")
	err = c.Do(ctx, wire.OpKVGet, &wirepb.KVGetRequest{Partition: "p", Keys: []string{"a"}}, net.Buffers{[]byte("x")}, &wirepb.KVGetReply{}, nil)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "payload")

	// Nothing was created, and the same connection still puts.
	all, err := sc.kv.List(ctx, "p")
	require.NoError(t, err)
	assert.Empty(t, all["p"])
	require.NoError(t, put([]string{"ok"}, []uint64{2}, []byte("hi")))
	got, err := sc.kv.BatchGet(ctx, "p", []string{"ok"}, "v")
	require.NoError(t, err)
	assert.Equal(t, "hi", got.Col("v").String(0))
	got.Release()
}

// TestKVPutWaitsForRoom: with the unit full, a small put through an
// in-memory controller (which answers KV_PUT without waiting for room)
// waits for room through the unit and lands once keys are cleared.
func TestKVPutWaitsForRoom(t *testing.T) {
	ctx := t.Context()
	sc := newServedKV(t)
	kv := sc.kv
	val := engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{make([]byte, 60<<10)})})
	var keys []string
	// Full is two puts in a row that found no room (the controller refused
	// at once; the put went to the unit and waited there for room until
	// the deadline): one slow put on a loaded machine is not a full unit.
	for i, failed := 0, 0; failed < 2; i++ {
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := kv.Put(short, "p", fmt.Sprint("k", i), val, nil)
		cancel()
		if err != nil {
			require.True(t, errors.Is(err, engine.ErrCapacity) || errors.Is(err, context.DeadlineExceeded), "a full unit: %v", err)
			failed++
			continue
		}
		failed = 0
		keys = append(keys, fmt.Sprint("k", i))
		require.Less(t, i, 1000, "the unit never filled")
	}
	done := make(chan error, 1)
	go func() {
		_, err := kv.Put(ctx, "p", "late", val, nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the put did not wait for room: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, kv.Clear(ctx, "p", keys[:10]))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the put still waits after keys were cleared")
	}
	got, err := kv.BatchGet(ctx, "p", []string{"late"}, "v")
	require.NoError(t, err)
	assert.Len(t, got.Col("v").RowBytes(0), 60<<10)
	got.Release()
}

// TestKVLanes: a client used by one goroutine keeps one controller
// connection; goroutines sharing it spread their KV puts and gets over
// more, up to RemoteConfig.Lanes (4 by default, here also 1), and every
// value reads back as written.
func TestKVLanes(t *testing.T) {
	for _, lanes := range []int{0, 1} {
		t.Run(fmt.Sprintf("lanes=%d", lanes), func(t *testing.T) {
			ctx := t.Context()
			sc := newServedKV(t)
			// A server of the same controller for this client alone, so
			// that its connections are the only ones counted.
			sock := filepath.Join(t.TempDir(), "lanes.sock")
			srv := serveController(t, sc.ctrl, sock)
			var units []*storage.Unit
			for _, u := range sc.units {
				units = append(units, u)
			}
			kvd, err := embedded.KVData(sc.ctrl, units...)
			require.NoError(t, err)
			srv.ServeKV(kvd)
			c, err := client.Connect(ctx, "unix://"+sock, client.ConnectConfig{Name: "lanes", Lanes: lanes})
			require.NoError(t, err)
			defer c.Close()
			kv := New(c)
			base := srv.Conns()
			require.Equal(t, 1, base)
			roundTrip := func(key string, v byte) error {
				val := bytes.Repeat([]byte{v}, 100)
				if _, err := kv.Put(ctx, "p", key, engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})}), nil); err != nil {
					return err
				}
				got, err := kv.BatchGetCopy(ctx, "p", []string{key}, "v")
				if err != nil {
					return err
				}
				if !bytes.Equal(got.Col("v").RowBytes(0), val) {
					return fmt.Errorf("key %s read %x, wrote %x", key, got.Col("v").RowBytes(0), val)
				}
				return nil
			}
			for i := range 50 {
				require.NoError(t, roundTrip(fmt.Sprint("solo", i%5), byte(i)))
			}
			assert.Equal(t, base, srv.Conns(), "one goroutine, one connection")

			errs := make(chan error, 16)
			for g := range 16 {
				go func() {
					var err error
					for i := 0; i < 50 && err == nil; i++ {
						err = roundTrip(fmt.Sprintf("g%d-%d", g, i%5), byte(g*50+i))
					}
					errs <- err
				}()
			}
			for range 16 {
				require.NoError(t, <-errs)
			}
			opened := srv.Conns() - base
			if lanes == 1 {
				assert.Zero(t, opened, "one lane: no other connection")
			} else {
				assert.Positive(t, opened, "overlapping calls open lanes")
				assert.LessOrEqual(t, opened, 3, "at most 4 lanes")
			}
		})
	}
}

// TestValueOps: a put of one opaque value of one key goes as KV_SET and a
// get of one field of one key as KV_GET_VALUE; what they answer by hand,
// what the client reads back through them (opaque and dense fields), and
// where they leave the get to KV_GET (CODE_NOT_FOUND).
func TestValueOps(t *testing.T) {
	t.Run("in-memory", func(t *testing.T) { testValueOps(t, newServedKV(t)) })
	t.Run("durable", func(t *testing.T) {
		// With a journal both ops answer once what they did, or saw, is
		// durable: a put in a goroutine, a get where it was read unless
		// it must wait.
		testValueOps(t, newServedDurableKV(t, nil))
	})
}

func testValueOps(t *testing.T, sc *servedCluster) {
	ctx := t.Context()
	c, _, err := wire.Dial(ctx, "unix://"+sc.sock, &wirepb.Hello{Role: "client", Name: "by-hand"}, wire.ConnConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	set := func(key, field string, val []byte) (*wirepb.CommitKeysReply, error) {
		var reply wirepb.CommitKeysReply
		return &reply, c.Do(ctx, wire.OpKVSet, &wirepb.KVSetRequest{Partition: "p", Key: key, Field: field}, net.Buffers{val}, &reply, nil)
	}
	get := func(key, field string, max uint64) (*wirepb.FieldSchema, []byte, error) {
		var schema wirepb.FieldSchema
		var data []byte
		err := c.Do(ctx, wire.OpKVGetValue, &wirepb.KVGetValueRequest{Partition: "p", Key: key, Field: field, MaxBytes: max}, nil, &schema,
			func(h wire.Header, _ proto.Message) ([][]byte, error) {
				data = make([]byte, h.PayloadLen)
				return [][]byte{data}, nil
			})
		return &schema, data, err
	}

	val := []byte("hello \x00 value")
	reply, err := set("k", "v", val)
	require.NoError(t, err)
	assert.Equal(t, []string{"v"}, reply.Fields)
	require.Len(t, reply.Tags, 1)
	schema, data, err := get("k", "v", 1<<10)
	require.NoError(t, err)
	assert.Equal(t, "bytes", schema.Dtype)
	assert.Equal(t, "opaque", schema.Kind)
	assert.Equal(t, val, data)
	// The same bytes through the client's general paths, and KV_GET_VALUE
	// for a value written the general way.
	viaUnits, err := sc.kv.BatchGetCopy(ctx, "p", []string{"k"}, "v")
	require.NoError(t, err)
	assert.Equal(t, val, viaUnits.Col("v").RowBytes(0))
	_, err = sc.kv.Put(ctx, "p", "k", engine.MustBatch(
		engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte("other")})},
		engine.Field{Name: "emb", Col: col(t, []float32{1.5, -2, 3, 4}, 2, 2)}), engine.Tags{"status": "done"})
	require.NoError(t, err)
	_, data, err = get("k", "v", 1<<10)
	require.NoError(t, err)
	assert.Equal(t, "other", string(data))

	// A dense field comes with its dtype and shape, and reads back as one.
	schema, data, err = get("k", "emb", 1<<10)
	require.NoError(t, err)
	assert.Equal(t, "float32", schema.Dtype)
	assert.Equal(t, "dense", schema.Kind)
	assert.Equal(t, []int64{2, 2}, schema.GetShape().GetDims())
	assert.Len(t, data, 16)
	got, err := sc.kv.BatchGet(ctx, "p", []string{"k"}, "emb")
	require.NoError(t, err)
	emb, err := engine.Values[float32](got.Col("emb"))
	require.NoError(t, err)
	assert.Equal(t, []float32{1.5, -2, 3, 4}, emb)
	assert.Equal(t, engine.Shape{2, 2}, got.Col("emb").Shape())
	got.Release()
	// Tags a KV_SET does not touch come back with its reply.
	reply, err = set("k", "v", []byte("third"))
	require.NoError(t, err)
	assert.Equal(t, []string{"emb", "v"}, reply.Fields)
	tags, err := wire.TagsFromPB(reply.Tags)
	require.NoError(t, err)
	assert.Equal(t, engine.Tags{"status": "done"}, tags[0])

	// What KV_GET_VALUE does not answer with bytes it leaves to KV_GET:
	// an absent key or field, or more bytes than asked for.
	for _, tc := range []struct {
		key, field string
		max        uint64
	}{{"absent", "v", 1 << 10}, {"k", "nope", 1 << 10}, {"k", "emb", 8}} {
		_, _, err := get(tc.key, tc.field, tc.max)
		require.ErrorIs(t, err, engine.ErrNotFound, "%+v", tc)
		assert.Contains(t, err.Error(), "ask KV_GET")
	}
	// Through the client those say what they would have said anyway.
	_, err = sc.kv.BatchGet(ctx, "p", []string{"absent"}, "v")
	require.ErrorIs(t, err, engine.ErrNotFound)
	assert.Contains(t, err.Error(), "absent")
	_, err = sc.kv.BatchGet(ctx, "p", []string{"k"}, "nope")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nope")

	// A KV_SET of a field the partition holds with another dtype is
	// refused, naming it, and changes nothing.
	_, err = set("k", "emb", []byte("12345678"))
	require.ErrorIs(t, err, engine.ErrDTypeMismatch)
	assert.Contains(t, err.Error(), "float32")
	_, data, err = get("k", "emb", 1<<10)
	require.NoError(t, err)
	assert.Len(t, data, 16)

	// An empty value is a value.
	_, err = set("empty", "v", nil)
	require.NoError(t, err)
	schema, data, err = get("empty", "v", 1<<10)
	require.NoError(t, err)
	assert.Equal(t, "opaque", schema.Kind)
	assert.Empty(t, data)
}

// TestValueOpsHostile sends KV_SET and KV_GET_VALUE requests a client
// never would: each is refused naming what was wrong, nothing changes,
// the connection goes on serving; a KV_SET whose payload stops halfway
// gives its reservation back when the connection ends.
func TestValueOpsHostile(t *testing.T) {
	// In memory the controller answers on its event loops; with the log
	// the gets are tried there and the puts run in goroutines.
	t.Run("in-memory", func(t *testing.T) { valueOpsHostile(t, newServedKV(t)) })
	t.Run("durable", func(t *testing.T) { valueOpsHostile(t, newServedDurableKV(t, nil)) })
}

func valueOpsHostile(t *testing.T, sc *servedCluster) {
	ctx := t.Context()
	c, _, err := wire.Dial(ctx, "unix://"+sc.sock, &wirepb.Hello{Role: "client", Name: "hostile"}, wire.ConnConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	set := func(req *wirepb.KVSetRequest, val []byte) error {
		return c.Do(ctx, wire.OpKVSet, req, net.Buffers{val}, &wirepb.CommitKeysReply{}, nil)
	}

	err = set(&wirepb.KVSetRequest{Partition: "p", Key: "big", Field: "v"}, make([]byte, 2<<20))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "exceeds 1048576")
	err = set(&wirepb.KVSetRequest{Partition: "", Key: "k", Field: "v"}, []byte("x"))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "partition")
	err = set(&wirepb.KVSetRequest{Partition: "p", Key: "", Field: "v"}, []byte("x"))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "key")
	err = set(&wirepb.KVSetRequest{Partition: "p", Key: "k", Field: ""}, []byte("x"))
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "field")
	err = c.Do(ctx, wire.OpKVGetValue, &wirepb.KVGetValueRequest{Partition: "p", Key: "k", Field: "v", MaxBytes: 10}, net.Buffers{[]byte("x")}, &wirepb.FieldSchema{}, nil)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "payload")
	err = c.Do(ctx, wire.OpKVGet, &wirepb.KVGetRequest{Partition: "p", Keys: []string{"k"}}, net.Buffers{[]byte("xy")}, &wirepb.KVGetReply{}, nil)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "KV_GET request with 2 payload bytes")

	// A body that does not decode (a key that is not UTF-8), sent by hand.
	body := protowire.AppendTag(nil, 2, protowire.BytesType)
	body = protowire.AppendBytes(body, []byte{0xff, 0xfe})
	nc := rawHello(t, sc.sock)
	_, err = nc.Write(append(wire.Header{Version: wire.Version, Op: wire.OpKVSet, ID: 2, BodyLen: uint32(len(body)), PayloadLen: 1}.Append(nil), append(body, 'x')...))
	require.NoError(t, err)
	h, rb := rawReply(t, nc)
	require.NotZero(t, h.Flags&wire.FlagError)
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(rb, &e))
	require.ErrorIs(t, wire.FromReply(&e), engine.ErrInvalid)
	assert.Contains(t, e.Message, "KV_SET")
	assert.Contains(t, e.Message, "the key is not valid UTF-8")
	nc.Close()

	// Nothing was created, and the same connection still sets.
	all, err := sc.kv.List(ctx, "p")
	require.NoError(t, err)
	assert.Empty(t, all["p"])
	require.NoError(t, set(&wirepb.KVSetRequest{Partition: "p", Key: "ok", Field: "v"}, []byte("hi")))
	got, err := sc.kv.BatchGet(ctx, "p", []string{"ok"}, "v")
	require.NoError(t, err)
	assert.Equal(t, "hi", got.Col("v").String(0))
	got.Release()

	// Half a payload, then the peer goes: the reservation made for it is
	// given back and nothing is committed.
	var u *storage.Unit
	for _, unit := range sc.units {
		u = unit
	}
	before := u.Stats()
	nc = rawHello(t, sc.sock)
	req, err := proto.Marshal(&wirepb.KVSetRequest{Partition: "p", Key: "half", Field: "v"})
	require.NoError(t, err)
	frame := wire.Header{Version: wire.Version, Op: wire.OpKVSet, ID: 2, BodyLen: uint32(len(req)), PayloadLen: 200 << 10}.Append(nil)
	frame = append(append(frame, req...), make([]byte, 1<<10)...)
	_, err = nc.Write(frame)
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // the handler reserves and reads
	require.NoError(t, nc.Close())
	require.Eventually(t, func() bool {
		s := u.Stats()
		return s.Reserved == before.Reserved && s.Used == before.Used
	}, 10*time.Second, 10*time.Millisecond, "the half-sent KV_SET's reservation stays: %+v, before %+v", u.Stats(), before)
	_, err = sc.kv.BatchGet(ctx, "p", []string{"half"}, "v")
	require.ErrorIs(t, err, engine.ErrNotFound)
}

// rawHello connects to a wire server's unix socket and makes the
// handshake by hand, for frames a client never sends.
func rawHello(t *testing.T, sock string) net.Conn {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	hello, err := proto.Marshal(&wirepb.Hello{Version: wire.Version, Role: "client"})
	require.NoError(t, err)
	_, err = nc.Write(append(wire.Header{Version: wire.Version, Op: wire.OpHello, ID: 1, BodyLen: uint32(len(hello))}.Append(nil), hello...))
	require.NoError(t, err)
	h, _ := rawReply(t, nc)
	require.Zero(t, h.Flags&wire.FlagError)
	return nc
}

// rawReply reads one reply frame without payload.
func rawReply(t *testing.T, nc net.Conn) (wire.Header, []byte) {
	t.Helper()
	require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
	var hb [wire.HeaderSize]byte
	_, err := io.ReadFull(nc, hb[:])
	require.NoError(t, err)
	h, err := wire.DecodeHeader(hb[:])
	require.NoError(t, err)
	body := make([]byte, h.BodyLen)
	_, err = io.ReadFull(nc, body)
	require.NoError(t, err)
	return h, body
}

// TestOneValueCallsKeepTheirResults: one-value puts and gets (KV_SET,
// KV_GET_VALUE) reuse their call's memory once answered; what each
// returned stays as it was through the calls after it, a failed one
// among them.
func TestOneValueCallsKeepTheirResults(t *testing.T) {
	ctx := t.Context()
	kv := newServedKV(t).kv
	value := func(s string) *engine.Batch {
		return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{[]byte(s)})})
	}
	m1, err := kv.Put(ctx, "p", "k1", value("one"), nil)
	require.NoError(t, err)
	m2, err := kv.Put(ctx, "p", "k2", value("two"), nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"k1"}, m1.Keys)
	assert.Equal(t, []string{"v"}, m1.Fields)
	assert.Equal(t, []string{"k2"}, m2.Keys)

	g1, err := kv.BatchGet(ctx, "p", []string{"k1"}, "v")
	require.NoError(t, err)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = kv.BatchGet(canceled, "p", []string{"k2"}, "v")
	require.ErrorIs(t, err, context.Canceled)
	g2, err := kv.BatchGet(ctx, "p", []string{"k2"}, "v")
	require.NoError(t, err)
	_, err = kv.Put(ctx, "p", "k1", value("uno"), nil)
	require.NoError(t, err)
	g3, err := kv.BatchGet(ctx, "p", []string{"k1"}, "v")
	require.NoError(t, err)
	assert.Equal(t, "one", string(g1.Col("v").RowBytes(0)))
	assert.Equal(t, "two", string(g2.Col("v").RowBytes(0)))
	assert.Equal(t, "uno", string(g3.Col("v").RowBytes(0)))
	for _, g := range []*engine.Batch{g1, g2, g3} {
		assert.Equal(t, 1, g.Rows())
		assert.Equal(t, []string{"v"}, g.Names())
		g.Release()
	}
}

// TestKVGetWaitsOutAControllerRestart: a KV get (KV_GET_VALUE for one
// value, KV_GET for more) is a read, and like the other reads it is sent
// again over a new connection while the controller restarts, instead of
// failing as unavailable at once.
func TestKVGetWaitsOutAControllerRestart(t *testing.T) {
	ctx := t.Context()
	sc := newServedKV(t)
	var units []*storage.Unit
	for _, u := range sc.units {
		units = append(units, u)
	}
	kvd, err := embedded.KVData(sc.ctrl, units...)
	require.NoError(t, err)
	sock := filepath.Join(t.TempDir(), "restart.sock")
	serve := func() *controller.Server {
		srv := serveController(t, sc.ctrl, sock)
		srv.ServeKV(kvd)
		return srv
	}
	srv := serve()
	c, err := client.Connect(ctx, "unix://"+sock, client.ConnectConfig{Name: "restart"})
	require.NoError(t, err)
	defer c.Close()
	kv := New(c)
	val := func(v byte) *engine.Batch {
		return engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{bytes.Repeat([]byte{v}, 100)})})
	}
	_, err = kv.BatchPut(ctx, "p", []string{"a", "b"}, engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{{1}, {2}})}), nil)
	require.NoError(t, err)
	_, err = kv.Put(ctx, "p", "k", val(7), nil)
	require.NoError(t, err)
	for _, keys := range [][]string{{"k"}, {"a", "b"}} {
		srv.Close()
		restarted := make(chan *controller.Server, 1)
		go func() { time.Sleep(300 * time.Millisecond); restarted <- serve() }()
		got, err := kv.BatchGet(ctx, "p", keys, "v")
		srv = <-restarted
		require.NoError(t, err, "a get of %v across the controller's restart", keys)
		require.Equal(t, len(keys), got.Rows())
		got.Release()
	}
}
