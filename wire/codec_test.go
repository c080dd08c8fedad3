package wire

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/tqgo/tq/wire/wirepb"
)

// wireMessages returns every message type of wirepb, by name.
func wireMessages() []protoreflect.MessageType {
	pkg := (&wirepb.Hello{}).ProtoReflect().Descriptor().ParentFile().Package()
	var out []protoreflect.MessageType
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if mt.Descriptor().ParentFile().Package() == pkg {
			out = append(out, mt)
		}
		return true
	})
	slices.SortFunc(out, func(a, b protoreflect.MessageType) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return out
}

// hasMap reports a message type that holds a map at any depth.
func hasMap(md protoreflect.MessageDescriptor) bool {
	fs := md.Fields()
	for i := range fs.Len() {
		if fd := fs.Get(i); fd.IsMap() || (fd.Message() != nil && hasMap(fd.Message())) {
			return true
		}
	}
	return false
}

// fill sets a random selection of m's fields, at every depth up to 4,
// to random values (strings valid UTF-8).
func fill(m protoreflect.Message, rng *rand.Rand, depth int) {
	fds := m.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() && (m.WhichOneof(od) != nil || rng.IntN(2) == 0) {
			continue
		}
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range rng.IntN(3) {
				if fd.Message() != nil {
					if depth < 4 {
						fill(l.AppendMutable().Message(), rng, depth+1)
					}
				} else {
					l.Append(scalar(fd, rng))
				}
			}
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for range rng.IntN(3) {
				k := scalar(fd.MapKey(), rng).MapKey()
				if fd.MapValue().Message() != nil {
					if depth < 4 {
						fill(mp.Mutable(k).Message(), rng, depth+1)
					}
				} else {
					mp.Set(k, scalar(fd.MapValue(), rng))
				}
			}
		case fd.Message() != nil:
			if depth < 4 && rng.IntN(3) > 0 {
				fill(m.Mutable(fd).Message(), rng, depth+1)
			}
		default:
			if rng.IntN(4) > 0 {
				m.Set(fd, scalar(fd, rng))
			}
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, rng *rand.Rand) protoreflect.Value {
	text := func() string {
		words := []string{"a", "key", "é", "✓", "field_9", "数据", ""}
		var b strings.Builder
		for range rng.IntN(4) {
			b.WriteString(words[rng.IntN(len(words))])
		}
		return b.String()
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(rng.IntN(2) == 0)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vs.Get(rng.IntN(vs.Len())).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(rng.Int32() - 1<<30)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(rng.Int64() - 1<<62)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(rng.Uint32())
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(rng.Uint64() >> rng.IntN(64))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(rng.Float32())
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(rng.NormFloat64())
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(text())
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(text()))
	}
	panic("no random value for " + fd.Kind().String())
}

// TestEveryMessageHasGeneratedCode fails when wirepb is regenerated
// without vtproto's code (make generate runs both plugins): every message
// would silently fall back to protobuf-go.
func TestEveryMessageHasGeneratedCode(t *testing.T) {
	mts := wireMessages()
	require.Greater(t, len(mts), 50)
	for _, mt := range mts {
		_, ok := mt.New().Interface().(vtMessage)
		require.True(t, ok, "%s lacks vtproto's code: run make generate", mt.Descriptor().FullName())
	}
}

// TestCodecRoundTrip: what AppendMessage encodes, protobuf-go decodes to
// an equal message, in the bytes protobuf-go encodes, for random values of
// every message type.
func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, mt := range wireMessages() {
		for range 30 {
			m := mt.New()
			fill(m, rng, 0)
			want := m.Interface()
			b, err := AppendMessage([]byte("prefix"), want)
			require.NoError(t, err)
			require.True(t, bytes.HasPrefix(b, []byte("prefix")))
			got := mt.New().Interface()
			require.NoError(t, proto.Unmarshal(b[len("prefix"):], got))
			require.True(t, proto.Equal(want, got), "%s: AppendMessage then proto.Unmarshal:\nwant %v\ngot  %v", mt.Descriptor().FullName(), want, got)
			if mt.Descriptor().Fields().Len() > 0 && !hasMap(mt.Descriptor()) {
				// Map entries come out in any order; everything else in
				// field order, as protobuf-go writes it.
				pb, err := proto.Marshal(want)
				require.NoError(t, err)
				require.Equal(t, pb, b[len("prefix"):], "%s", mt.Descriptor().FullName())
			}
		}
	}
}

// BenchmarkCodec: AppendMessage against protobuf-go's marshal on the
// requests of a small KV put and get, and on a fetch's meta for 256 rows.
//
//	go test -run '^$' -bench Codec -count 6 ./wire | benchstat -col /codec -
func BenchmarkCodec(b *testing.B) {
	idx := make([]uint64, 256)
	addrs := &wirepb.Addrs{}
	for i := range idx {
		idx[i] = uint64(1000 + i)
		addrs.Offset = append(addrs.Offset, uint64(i)<<12)
		addrs.Len = append(addrs.Len, 4096)
	}
	msgs := []struct {
		name string
		m    proto.Message
	}{
		{"kv_put", &wirepb.KVPutRequest{Put: &wirepb.CommitKeysRequest{Partition: "small", Keys: []string{"c0_k0"}, Fields: []*wirepb.CommitField{{Name: "v", Dtype: "bytes", Kind: "opaque"}}}, RowLens: []*wirepb.RowLens{{Lens: []uint64{1024}}}}},
		{"kv_get", &wirepb.KVGetRequest{Partition: "small", Keys: []string{"c0_k0"}, Fields: &wirepb.FieldSelection{Names: []string{"v"}}, MaxBytes: 1 << 20}},
		{"meta_256", &wirepb.BatchMeta{Indexes: idx, Partitions: []string{"train"}, Schema: map[string]*wirepb.FieldSchema{"tokens": {Dtype: "int64", Kind: "ragged"}}, Cells: map[string]*wirepb.Addrs{"tokens": addrs}}},
	}
	for _, mm := range msgs {
		buf := make([]byte, 0, 2*proto.Size(mm.m))
		var err error
		for _, codec := range []string{"protobuf-go", "tq"} {
			b.Run("msg="+mm.name+"/codec="+codec, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if codec == "tq" {
						buf, err = AppendMessage(buf[:0], mm.m)
					} else {
						buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], mm.m)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDecodeCommitKeysReply: a KV put's answer (one key, no tags,
// one field), by proto.Unmarshal and by hand.
func BenchmarkDecodeCommitKeysReply(b *testing.B) {
	body, err := proto.Marshal(&wirepb.CommitKeysReply{Tags: [][]byte{nil}, Fields: []string{"v"}})
	require.NoError(b, err)
	for _, codec := range []string{"protobuf-go", "tq"} {
		b.Run("codec="+codec, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m wirepb.CommitKeysReply
				var err error
				if codec == "tq" {
					err = DecodeCommitKeysReply(body, &m)
				} else {
					err = proto.Unmarshal(body, &m)
				}
				if err != nil || len(m.Fields) != 1 {
					b.Fatal(err, &m)
				}
			}
		})
	}
}

// FuzzDecodeKVRequests: DecodeKVSet and DecodeKVGetValue accept what
// proto.Unmarshal accepts, refuse what it refuses, and decode the same
// values.
func FuzzDecodeKVRequests(f *testing.F) {
	for _, m := range []proto.Message{
		&wirepb.KVSetRequest{Partition: "p", Key: "k-1", Field: "value"},
		&wirepb.KVGetValueRequest{Partition: "p", Key: "k-1", Field: "value", MaxBytes: 1 << 20},
		&wirepb.KVGetValueRequest{Key: "ключ", MaxBytes: math.MaxUint64},
		&wirepb.KVGetRequest{Partition: "p", Keys: []string{"a", "b"}, MaxBytes: 7}, // other shapes of fields 1-4
	} {
		b, err := proto.Marshal(m)
		require.NoError(f, err)
		f.Add(b)
		f.Add(append(b, b...))
	}
	for _, b := range [][]byte{
		{0x0a, 0x02, 0xff, 0xfe}, // partition not UTF-8
		{0x0a, 0x05, 'a'},        // cut short
		{0x20, 0x80},             // max_bytes cut inside its varint
		{0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, // a varint over 64 bits
		{0x08, 0x01},                         // partition as a varint: unknown, skipped
		{0x13, 0x0a, 0x01, 'x', 0x14},        // a group holding a field
		{0x13, 0x1c},                         // a group ended by another number
		{0x0c},                               // a stray end of group
		{0x00},                               // field number 0
		{0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00}, // the largest field number
		{0x80, 0x80, 0x80, 0x80, 0x10, 0x00}, // a field number over the maximum
		{0x25, 1, 2, 3, 4, 0x21, 1, 2, 3, 4, 5, 6, 7, 8}, // fixed32 and fixed64 where a varint is known
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var set wirepb.KVSetRequest
		want := proto.Unmarshal(b, &set)
		p, k, fl, err := DecodeKVSet(b)
		if (want == nil) != (err == nil) {
			t.Fatalf("KVSetRequest %x: proto.Unmarshal says %v, DecodeKVSet %v", b, want, err)
		}
		if err == nil && (p != set.Partition || k != set.Key || fl != set.Field) {
			t.Fatalf("KVSetRequest %x: decoded %q %q %q, want %q %q %q", b, p, k, fl, set.Partition, set.Key, set.Field)
		}
		var get wirepb.KVGetValueRequest
		want = proto.Unmarshal(b, &get)
		p, k, fl, max, err := DecodeKVGetValue(b)
		if (want == nil) != (err == nil) {
			t.Fatalf("KVGetValueRequest %x: proto.Unmarshal says %v, DecodeKVGetValue %v", b, want, err)
		}
		if err == nil && (p != get.Partition || k != get.Key || fl != get.Field || max != get.MaxBytes) {
			t.Fatalf("KVGetValueRequest %x: decoded %q %q %q %d, want %+v", b, p, k, fl, max, &get)
		}
	})
}

// FuzzDecodeCommitKeysReply: DecodeCommitKeysReply decodes what
// proto.Unmarshal does into the same message, and refuses what it refuses.
func FuzzDecodeCommitKeysReply(f *testing.F) {
	for _, m := range []*wirepb.CommitKeysReply{
		{Tags: [][]byte{nil}, Fields: []string{"v"}},
		{Tags: [][]byte{[]byte(`{"status":"done"}`), nil}, Fields: []string{"a", "ключ"}},
		{Replaced: &wirepb.Addrs{Unit: []uint32{1}}, Tags: [][]byte{nil}},
		{},
	} {
		b, err := proto.Marshal(m)
		require.NoError(f, err)
		f.Add(b)
		f.Add(append(b, b...))
	}
	for _, b := range [][]byte{
		{0x1a, 0x02, 0xff, 0xfe},       // a field name not UTF-8
		{0x12, 0x05, 'a'},              // tags cut short
		{0x1a, 0x01, 'x', 0x08, 0x01},  // an unknown varint after a field
		{0x18, 0x01},                   // fields as a varint
		{0x12, 0x00, 0x1a, 0x00},       // an empty tag map and an empty name
		{0x0a, 0x02, 0x08, 0x07},       // replaced, well formed
		{0x0a, 0x02, 0x08},             // replaced, cut short
		{0x1a, 0x80, 0x80, 0x80, 0x80}, // a length cut inside its varint
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want wirepb.CommitKeysReply
		werr := proto.Unmarshal(b, &want)
		got := wirepb.CommitKeysReply{Tags: [][]byte{[]byte("stale")}, Fields: []string{"stale"}}
		err := DecodeCommitKeysReply(b, &got)
		if (werr == nil) != (err == nil) {
			t.Fatalf("%x: proto.Unmarshal says %v, DecodeCommitKeysReply %v", b, werr, err)
		}
		if err == nil && !proto.Equal(&got, &want) {
			t.Fatalf("%x: decoded %v, want %v", b, &got, &want)
		}
	})
}

// TestDecodeCommitKeysReplyAllocs: a one-key put's answer decodes in one
// allocation (its tag map and field in one block), and one for 64 tagged
// keys in four (the lists made at their sizes, the tag maps' bytes in
// one buffer), not an allocation per entry.
func TestDecodeCommitKeysReplyAllocs(t *testing.T) {
	many := &wirepb.CommitKeysReply{Fields: []string{"a", "b", "c"}}
	for i := range 64 {
		many.Tags = append(many.Tags, fmt.Appendf(nil, `{"i":%d}`, i))
	}
	for _, c := range []struct {
		name string
		m    *wirepb.CommitKeysReply
		most float64
	}{
		{"one key", &wirepb.CommitKeysReply{Tags: [][]byte{nil}, Fields: []string{"v"}}, 1},
		{"64 tagged keys", many, 4},
	} {
		body, err := proto.Marshal(c.m)
		require.NoError(t, err)
		var got wirepb.CommitKeysReply
		n := testing.AllocsPerRun(100, func() {
			if err := DecodeCommitKeysReply(body, &got); err != nil {
				t.Fatal(err)
			}
		})
		require.True(t, proto.Equal(&got, c.m), "%s: decoded %v, want %v", c.name, &got, c.m)
		assert.LessOrEqual(t, n, c.most, "%s: allocations per decode", c.name)
	}
}
