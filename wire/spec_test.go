package wire

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/linger"
	"github.com/tqgo/tq/wire/wirepb"
)

// specOpRow matches a row of spec.md's op tables: | 16 | `INSERT` | request | reply | …
var specOpRow = regexp.MustCompile("(?m)^\\| (\\d+) \\| `([A-Z_]+)` \\|(.*)$")

// specOps reads spec.md's op tables: each op's name by number, and the
// rest of its row.
func specOps(t *testing.T) (names map[Op]string, rows map[Op]string) {
	t.Helper()
	spec, err := os.ReadFile("spec.md")
	require.NoError(t, err)
	names, rows = map[Op]string{}, map[Op]string{}
	for _, m := range specOpRow.FindAllStringSubmatch(string(spec), -1) {
		n, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		op := Op(n)
		_, twice := names[op]
		require.False(t, twice, "spec.md lists op %d twice", n)
		names[op], rows[op] = m[2], m[3]
	}
	return names, rows
}

// spec.md's op tables list every op of ops.go, under its number and name,
// and no other: a client written from the document speaks what the code
// serves.
func TestSpecListsEveryOp(t *testing.T) {
	names, _ := specOps(t)
	assert.Equal(t, opNames, names)
}

// specMessage matches a message named with its fields in spec.md:
// InsertRequest{partition, n, fields}.
var specMessage = regexp.MustCompile(`\b([A-Z][A-Za-z]*)\{`)

// Every field spec.md's op tables name in a message's braces is a field of
// that message in wire/proto, every message they name exists, and every
// field of such a message is in its braces: a field added to a proto
// message is described where a client's author looks.
func TestSpecMessageFieldsExist(t *testing.T) {
	_, rows := specOps(t)
	for op, row := range rows {
		for _, loc := range specMessage.FindAllStringSubmatchIndex(row, -1) {
			name := row[loc[2]:loc[3]]
			fields, ok := braced(row[loc[1]:])
			require.True(t, ok, "%v: %s{ is not closed", op, name)
			d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName("tq.wire.v1." + name))
			if !assert.NoError(t, err, "%v names message %s", op, name) {
				continue
			}
			md, ok := d.(protoreflect.MessageDescriptor)
			if !assert.True(t, ok, "%v: %s is not a message", op, name) {
				continue
			}
			for _, f := range fields {
				if f == "…" {
					continue
				}
				assert.NotNil(t, md.Fields().ByName(protoreflect.Name(f)), "%v: spec.md names field %s.%s, which wire/proto lacks", op, name, f)
			}
			for i := range md.Fields().Len() {
				f := string(md.Fields().Get(i).Name())
				assert.Contains(t, fields, f, "%v: wire/proto's %s has field %s, which spec.md leaves out of %s{…}", op, name, f, name)
			}
		}
	}
}

// braced returns the names listed at the top level of s up to the brace
// that closes it ("a, b[C{x}], c}" gives a, b, c).
func braced(s string) ([]string, bool) {
	var names []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '{', '[':
			if depth == 0 {
				names = append(names, strings.TrimSpace(s[start:i]))
				start = -1
			}
			depth++
		case ']':
			depth--
		case '}':
			if depth == 0 {
				if start >= 0 {
					names = append(names, strings.TrimSpace(s[start:i]))
				}
				return nonEmpty(names), true
			}
			depth--
		case ',':
			if depth == 0 {
				if start >= 0 {
					names = append(names, strings.TrimSpace(s[start:i]))
				}
				start = i + 1
			}
		}
	}
	return nil, false
}

func nonEmpty(ss []string) []string {
	out := ss[:0]
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// The limits and defaults of this package are the numbers spec.md states:
// each phrase, made from the constant, is in it (white space folded).
func TestSpecStatesTheLimits(t *testing.T) {
	b, err := os.ReadFile("spec.md")
	require.NoError(t, err)
	spec := strings.Join(strings.Fields(string(b)), " ")
	mib := func(n int) string { return fmt.Sprintf("%d MiB", n>>20) }
	conf := ConnConfig{}.withDefaults()
	for _, phrase := range []string{
		fmt.Sprintf("| body length | ≤ %s |", mib(MaxBodyLen)),
		fmt.Sprintf("| payload length | ≤ 2^%d |", bits.Len(MaxPayloadLen)-1),
		fmt.Sprintf("body ≤ %s; payload ≤ 2^%d bytes", mib(MaxBodyLen), bits.Len(MaxPayloadLen)-1),
		fmt.Sprintf("a `HELLO` body ≤ %d bytes", MaxHelloLen),
		fmt.Sprintf("listed in one body ≤ %s each", commas(MaxSegments)),
		fmt.Sprintf("(%d by default). A connection past the limit", DefaultMaxConns),
		fmt.Sprintf("(`MaxHandshakes`: %d by default", DefaultMaxHandshakes),
		fmt.Sprintf("At most %d connections are being refused, and at most %d evicted", maxRefusing, maxRefusing),
		fmt.Sprintf("a server runs at most %d requests of one connection at once", DefaultMaxInFlight),
		fmt.Sprintf("a server runs at most %d requests of all connections together (`MaxRequests`", DefaultMaxRequests),
		fmt.Sprintf("≤ %s per connection and ≤ %d GiB in all", mib(DefaultMaxConnBuffered), DefaultMaxBuffered>>30),
		fmt.Sprintf("its whole body must arrive within %d s", int(DefaultFrameTimeout/time.Second)),
		fmt.Sprintf("within %d s (the *write timeout*", int(DefaultWriteTimeout/time.Second)),
		fmt.Sprintf("(`tq serve --peer-timeout`, %d s)", int(DefaultPeerTimeout/time.Second)),
		fmt.Sprintf("each frame whole in what one read returns and its body and payload each ≤ %d KiB", loopMax>>10),
		fmt.Sprintf("Every frame is a %d-byte header", HeaderSize),
		fmt.Sprintf("a cell with unit `%d` (2^%d − 1, no unit has it) is produced but its bytes are lost for good", engine.LostUnit, bits.Len32(uint32(engine.LostUnit))),
		fmt.Sprintf("| version | `%d` |", Version),
		fmt.Sprintf("bit %d `REPLY`, bit %d `ERROR`; other bits zero", bits.Len(uint(FlagReply))-1, bits.Len(uint(FlagError))-1),
		fmt.Sprintf("sent whole within %d s of connecting", int(DefaultHandshakeTimeout/time.Second)),
		fmt.Sprintf("it must send its `HELLO` within %d s", int(refuseTimeout/time.Second)),
		fmt.Sprintf("until the client closes or for %d s", int(linger.Time/time.Second)),
		fmt.Sprintf("with a body of at most %d KiB", DefaultInlineMaxBody>>10),
		fmt.Sprintf("both nonces are exactly %d bytes", AuthNonceLen),
		fmt.Sprintf("waits at most %d s for its answer", int(giveUpWait/time.Second)),
		fmt.Sprintf("Servers close connections that send nothing for %d minutes", int(NewServer(ServerConfig{}).cfg.IdleTimeout/time.Minute)),
		fmt.Sprintf("pings every %d s and treats a connection whose ping goes unanswered for %d s as dead", int(conf.KeepAlive/time.Second), int(conf.PingTimeout/time.Second)),
		fmt.Sprintf("(%d s at most, in the Go and Python clients)", int(writeFailGrace/time.Second)),
		fmt.Sprintf("its payload at least %s per %d s", mib(payloadChunk), int(DefaultFrameTimeout/time.Second)),
		fmt.Sprintf("take each %s of its replies within %d s", mib(writeChunk), int(DefaultWriteTimeout/time.Second)),
	} {
		assert.True(t, strings.Contains(spec, phrase), "spec.md does not state %q", phrase)
	}
}

// commas writes n with thousands separators, as spec.md does: 4,194,304.
func commas(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// specCodeRow matches a row of spec.md's error table: | 5 `CODE_CAPACITY` | …
var specCodeRow = regexp.MustCompile("(?m)^\\| (\\d+) `(CODE_[A-Z_]+)` \\|")

// spec.md's error table lists every code of common.proto, under its
// number, and no other: a client written from the document knows every
// code a server may send.
func TestSpecListsEveryCode(t *testing.T) {
	spec, err := os.ReadFile("spec.md")
	require.NoError(t, err)
	got := map[int32]string{}
	for _, m := range specCodeRow.FindAllStringSubmatch(string(spec), -1) {
		n, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		_, twice := got[int32(n)]
		require.False(t, twice, "spec.md lists code %d twice", n)
		got[int32(n)] = m[2]
	}
	want := maps.Clone(wirepb.Code_name)
	delete(want, int32(wirepb.Code_CODE_UNSPECIFIED)) // no error reply carries it
	assert.Equal(t, want, got)
}

// Every code but CODE_INTERNAL stands for one Go error, both ways: a
// server's error wrapping it is sent as that code, the reply unwraps to
// it, and a RemoteError passed on (a server relaying a peer's refusal)
// keeps its code. CODE_INTERNAL, and a code this side does not know,
// unwrap to nothing: an error no caller takes for one it could retry.
func TestCodesMapBothWays(t *testing.T) {
	for n, name := range wirepb.Code_name {
		code := wirepb.Code(n)
		if code == wirepb.Code_CODE_UNSPECIFIED {
			continue
		}
		re := &RemoteError{Code: code, Message: "m"}
		sentinel := re.Unwrap()
		if code == wirepb.Code_CODE_INTERNAL {
			assert.Nil(t, sentinel, name)
			assert.Equal(t, code, CodeOf(errors.New("a bug")), name)
			assert.Equal(t, code, CodeOf(re), name)
			continue
		}
		if !assert.NotNil(t, sentinel, "%s unwraps to no Go error", name) {
			continue
		}
		assert.Equal(t, code, CodeOf(fmt.Errorf("what was wrong: %w", sentinel)), "%s: the error it unwraps to is sent as another code", name)
		assert.Equal(t, code, CodeOf(re), "%s: relayed as another code", name)
		back := FromReply(ErrorReply(fmt.Errorf("what was wrong: %w", sentinel)))
		assert.ErrorIs(t, back, sentinel, name)
		assert.Equal(t, "what was wrong: "+sentinel.Error(), back.Error(), name)
	}
	// The relations the table states.
	assert.ErrorIs(t, &RemoteError{Code: wirepb.Code_CODE_TOO_LARGE}, engine.ErrCapacity)
	assert.NotErrorIs(t, &RemoteError{Code: wirepb.Code_CODE_CAPACITY}, engine.ErrTooLarge)
	assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, CodeOf(ErrServerUnproven))
	unknown := &RemoteError{Code: 99, Message: "m"}
	assert.Nil(t, unknown.Unwrap())
	assert.Equal(t, wirepb.Code_CODE_INTERNAL, CodeOf(unknown))
}

// An error about keys carries them in Error.keys, the first 1024, and its
// message spells out the first 16 and how many more (spec.md "Errors").
func TestErrorReplyCarriesTheKeys(t *testing.T) {
	keys := make([]string, 2000)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	err := &engine.KeysError{Keys: keys, Err: fmt.Errorf("keys %s not in partition \"p\": %w", engine.QuoteKeys(keys), engine.ErrNotFound)}
	e := ErrorReply(err)
	assert.Equal(t, wirepb.Code_CODE_NOT_FOUND, e.Code)
	assert.Equal(t, keys[:engine.MaxErrorKeys], e.Keys)
	assert.Contains(t, e.Message, `"k15"] and 1984 more`)
	assert.NotContains(t, e.Message, `"k16"`)
	ke, ok := errors.AsType[*engine.KeysError](FromReply(e))
	require.True(t, ok)
	assert.Equal(t, keys[:engine.MaxErrorKeys], ke.Keys)
	assert.ErrorIs(t, ke, engine.ErrNotFound)
	_, ok = errors.AsType[*engine.KeysError](FromReply(&wirepb.Error{Code: wirepb.Code_CODE_NOT_FOUND, Message: "m"}))
	assert.False(t, ok, "a reply without keys is no KeysError")
}

// The HELLO refusals spec.md's Handshake names, each with its code, in a
// reply to the HELLO's own request id: another version is
// CODE_NOT_SUPPORTED, a client nonce of another length than 32 bytes
// CODE_INVALID, a wrong token or a wrong proof CODE_UNAUTHENTICATED.
func TestSpecHelloRefusals(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Token: "secret"}, "tcp")
	for _, tc := range []struct {
		name  string
		hello *wirepb.Hello
		want  wirepb.Code
	}{
		{"version 2", &wirepb.Hello{Version: 2, Token: "secret"}, wirepb.Code_CODE_NOT_SUPPORTED},
		{"nonce of 16 bytes", &wirepb.Hello{Version: Version, AuthNonce: make([]byte, 16)}, wirepb.Code_CODE_INVALID},
		{"nonce of 33 bytes", &wirepb.Hello{Version: Version, AuthNonce: make([]byte, 33)}, wirepb.Code_CODE_INVALID},
		{"wrong token", &wirepb.Hello{Version: Version, Token: "guess"}, wirepb.Code_CODE_UNAUTHENTICATED},
		{"no token", &wirepb.Hello{Version: Version}, wirepb.Code_CODE_UNAUTHENTICATED},
	} {
		nc := rawDial(t, addr, nil)
		_, err := nc.Write(frame(OpHello, 0, 7, tc.hello, nil))
		require.NoError(t, err)
		h, body := readFrame(t, nc)
		require.Equal(t, FlagReply|FlagError, h.Flags, tc.name)
		assert.Equal(t, uint64(7), h.ID, tc.name)
		assert.Equal(t, OpHello, h.Op, tc.name)
		var e wirepb.Error
		require.NoError(t, proto.Unmarshal(body, &e))
		assert.Equal(t, tc.want, e.Code, "%s: %s", tc.name, e.Message)
	}

	// A wrong proof after the challenge: CODE_UNAUTHENTICATED, to the
	// second HELLO's id.
	nc := rawDial(t, addr, nil)
	_, err := nc.Write(frame(OpHello, 0, 1, &wirepb.Hello{Version: Version, AuthNonce: make([]byte, AuthNonceLen)}, nil))
	require.NoError(t, err)
	h, body := readFrame(t, nc)
	require.Equal(t, FlagReply, h.Flags)
	var challenge wirepb.Hello
	require.NoError(t, proto.Unmarshal(body, &challenge))
	assert.Len(t, challenge.AuthNonce, AuthNonceLen)
	assert.NotEmpty(t, challenge.AuthProof)
	_, err = nc.Write(frame(OpHello, 0, 2, &wirepb.Hello{Version: Version, AuthProof: make([]byte, 32)}, nil))
	require.NoError(t, err)
	h, body = readFrame(t, nc)
	require.Equal(t, FlagReply|FlagError, h.Flags)
	assert.Equal(t, uint64(2), h.ID)
	var e wirepb.Error
	require.NoError(t, proto.Unmarshal(body, &e))
	assert.Equal(t, wirepb.Code_CODE_UNAUTHENTICATED, e.Code, e.Message)
}

// A HELLO reply with auth_nonce or auth_proof is a challenge (spec.md
// "The challenge"): one without its proof is a server that did not prove
// the token; one to a client that asked for none, or one answering the
// client's proof, is corrupt.
func TestSpecChallengeReplies(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, AuthNonceLen)
	for _, tc := range []struct {
		name   string
		token  string
		answer func(nc net.Conn, h Header, body []byte)
		want   error
	}{
		{"a nonce without a proof", authToken, func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Hello{Version: Version, AuthNonce: nonce}, FlagReply)
		}, ErrServerUnproven},
		{"a challenge to a HELLO that asked for none", "", func(nc net.Conn, h Header, _ []byte) {
			writeReply(nc, h, &wirepb.Hello{Version: Version, AuthNonce: nonce, AuthProof: nonce}, FlagReply)
		}, engine.ErrCorrupt},
		{"a challenge answering the proof", authToken, func(nc net.Conn, h Header, body []byte) {
			var hello wirepb.Hello
			if proto.Unmarshal(body, &hello) != nil {
				return
			}
			challenge := &wirepb.Hello{Version: Version, AuthNonce: nonce, AuthProof: serverProof(authToken, hello.AuthNonce, nonce)}
			writeReply(nc, h, challenge, FlagReply)
			if h2, _, err := readAuthFrame(nc); err == nil {
				writeReply(nc, h2, challenge, FlagReply)
			}
		}, engine.ErrCorrupt},
	} {
		rs := startRecording(t, tc.answer)
		c, _, err := Dial(t.Context(), rs.addr, &wirepb.Hello{Role: "client", Token: tc.token}, ConnConfig{})
		if err == nil {
			c.Close()
		}
		assert.ErrorIs(t, err, tc.want, tc.name)
	}
}
