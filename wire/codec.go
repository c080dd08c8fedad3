package wire

// Encoding messages. wirepb's messages carry, besides protobuf-go's
// table-driven code, the straight-line marshal code protoc-gen-go-vtproto
// generates (*_vtproto.pb.go): the same bytes, three to four times
// cheaper for a small request (BenchmarkCodec). Decoding stays with
// protobuf-go: vtproto's decoder is no faster once it is made as strict
// (it takes strings that are not UTF-8, packed lists cut inside a varint,
// varints over 64 bits), as both spend their time allocating the message.

import (
	"slices"

	"google.golang.org/protobuf/proto"
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
