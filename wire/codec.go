package wire

// Encoding messages. wirepb's messages carry, besides protobuf-go's
// table-driven code, the straight-line marshal code protoc-gen-go-vtproto
// generates (*_vtproto.pb.go): the same bytes, three to four times
// cheaper for a small request (BenchmarkCodec). Decoding stays with
// protobuf-go: vtproto's decoder is no faster once it is made as strict
// (it takes strings that are not UTF-8, packed lists cut inside a varint,
// varints over 64 bits), as both spend their time allocating the message.

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire/wirepb"
)

// vtMessage is a message with vtproto's generated code.
type vtMessage interface {
	proto.Message
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
}

// AppendMessage appends m's encoding to b. Unlike proto.Marshal it does
// not check that strings are valid UTF-8: what TQ sends it checked before
// (a client's names) or took from what it decoded (a server's replies).
func AppendMessage(b []byte, m proto.Message) ([]byte, error) {
	vt, ok := m.(vtMessage)
	if !ok {
		return proto.MarshalOptions{}.MarshalAppend(b, m)
	}
	n := vt.SizeVT()
	b = slices.Grow(b, n)
	if _, err := vt.MarshalToSizedBufferVT(b[len(b) : len(b)+n]); err != nil {
		return b, err
	}
	return b[:len(b)+n], nil
}

// DecodeKVSet decodes a KVSetRequest body; DecodeKVGetValue a
// KVGetValueRequest's. These two carry every small-value put and get, and
// decoding them by hand into strings (no message, no reflection) takes
// about half of proto.Unmarshal's time. They accept and refuse exactly
// what proto.Unmarshal does (FuzzDecodeKVRequests compares them): fields
// in any order, the last of a repeated one winning, unknown fields and
// known ones of another wire type skipped when well formed, strings that
// are valid UTF-8 only.
func DecodeKVSet(b []byte) (partition, key, field string, err error) {
	partition, key, field, _, err = decodeKeyField(b, false)
	return
}

// DecodeKVGetValue: see [DecodeKVSet].
func DecodeKVGetValue(b []byte) (partition, key, field string, maxBytes uint64, err error) {
	return decodeKeyField(b, true)
}

var errBadMessage = errors.New("proto: cannot parse invalid wire-format data")

// decodeKeyField decodes strings 1–3 (partition, key, field) and, with
// withMax, the uint64 4 (max_bytes).
func decodeKeyField(b []byte, withMax bool) (partition, key, field string, maxBytes uint64, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return "", "", "", 0, errBadMessage
		}
		b = b[n:]
		switch {
		case num >= 1 && num <= 3 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", "", 0, errBadMessage
			}
			if !utf8.Valid(v) {
				return "", "", "", 0, fmt.Errorf("the %s is not valid UTF-8", [...]string{1: "partition", 2: "key", 3: "field"}[num])
			}
			switch num {
			case 1:
				partition = string(v)
			case 2:
				key = string(v)
			default:
				field = string(v)
			}
			b = b[n:]
		case withMax && num == 4 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return "", "", "", 0, errBadMessage
			}
			maxBytes, b = v, b[n:]
		default: // unknown, or known with another wire type
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return "", "", "", 0, errBadMessage
			}
			b = b[n:]
		}
	}
	return partition, key, field, maxBytes, nil
}

// DecodeCommitKeysReply decodes a CommitKeysReply body (the answer to
// every KV put) into m, accepting and refusing what proto.Unmarshal does
// (FuzzDecodeCommitKeysReply compares them). A put's answer holds only
// tags and fields, which it decodes by hand; a body with anything else in
// it (the overwritten addresses, an unknown field) goes to proto.Unmarshal.
//
// A first pass counts the tag maps, fields and tag bytes, so the lists
// are made at their sizes and the tag maps' bytes copied into one buffer:
// a one-key answer of one field (a KV_SET's) is one allocation (two with
// tags), rather than lists grown entry by entry and a copy per tag map.
func DecodeCommitKeysReply(b []byte, m *wirepb.CommitKeysReply) error {
	var ntags, nfields, tagBytes int
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 || typ != protowire.BytesType || num < 2 || num > 3 {
			return proto.Unmarshal(b, m)
		}
		v, k := protowire.ConsumeBytes(rest[n:])
		if k < 0 {
			return errBadMessage
		}
		rest = rest[n+k:]
		if num == 2 {
			ntags++
			tagBytes += len(v)
			continue
		}
		if !utf8.Valid(v) {
			return fmt.Errorf("field name %q is not valid UTF-8", v)
		}
		nfields++
	}
	var tags [][]byte
	var fields []string
	switch {
	case ntags == 0 && nfields == 0:
	case ntags <= 1 && nfields <= 1:
		mem := new(struct {
			tags   [1][]byte
			fields [1]string
		})
		tags, fields = mem.tags[:0:ntags], mem.fields[:0:nfields]
	default:
		tags, fields = make([][]byte, 0, ntags), make([]string, 0, nfields)
	}
	// Never nil, so that an empty tag map decodes, as by proto.Unmarshal,
	// to empty bytes rather than nil (no allocation when all are empty).
	tagBuf := make([]byte, 0, tagBytes)
	for rest := b; len(rest) > 0; {
		num, _, n := protowire.ConsumeTag(rest)
		v, k := protowire.ConsumeBytes(rest[n:])
		rest = rest[n+k:]
		if num == 2 {
			start := len(tagBuf)
			tagBuf = append(tagBuf, v...)
			tags = append(tags, tagBuf[start:len(tagBuf):len(tagBuf)])
			continue
		}
		fields = append(fields, string(v))
	}
	if ntags == 0 {
		tags = nil
	}
	if nfields == 0 {
		fields = nil
	}
	proto.Reset(m)
	m.Tags, m.Fields = tags, fields
	return nil
}
