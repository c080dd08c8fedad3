package controller

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// controlOpNames are the ops ops.go numbers for the controller (16–63): every
// one of them the controller serves, and protocol.md describes.
func controlOpNames() map[string]bool {
	ops := map[string]bool{}
	for n := 16; n < 64; n++ {
		if name := wire.Op(n).String(); !strings.HasPrefix(name, "OP_") {
			ops[name] = true
		}
	}
	return ops
}

// protocolOpRow matches a row of protocol.md's op table: | FETCH | … or
// | CLEAR_ROWS, CLEAR_KEYS | ….
var protocolOpRow = regexp.MustCompile("(?m)^\\| ([A-Z_]+(?:, [A-Z_]+)*) \\|")

// protocol.md's op table names every control op of ops.go, once, and no
// other; and the server has a handler for each.
func TestProtocolDocListsEveryControlOp(t *testing.T) {
	doc, err := os.ReadFile("protocol.md")
	require.NoError(t, err)
	listed := map[string]bool{}
	for _, m := range protocolOpRow.FindAllStringSubmatch(string(doc), -1) {
		for _, name := range strings.Split(m[1], ", ") {
			require.False(t, listed[name], "protocol.md lists %s twice", name)
			listed[name] = true
		}
	}
	assert.Equal(t, controlOpNames(), listed, "protocol.md's op table against ops.go's control ops")

	served := map[string]bool{}
	s := NewServer(newController(t, Config{}), ServerConfig{})
	defer s.Close()
	for op := range s.handlers {
		served[op.String()] = true
	}
	// They carry payloads and have wire handlers of their own (NewServer).
	for _, op := range []wire.Op{wire.OpKVPut, wire.OpKVSet, wire.OpKVGet, wire.OpKVGetValue} {
		served[op.String()] = true
	}
	assert.Equal(t, controlOpNames(), served, "the controller's handlers against ops.go's control ops")
}

// specFeatureRow matches a row of wire/spec.md's feature table.
var specFeatureRow = regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\|")

// The features a controller's HELLO reply names are those wire/spec.md's
// feature table describes, and only those.
func TestSpecListsEveryHelloFeature(t *testing.T) {
	spec, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	var documented []string
	for _, m := range specFeatureRow.FindAllStringSubmatch(string(spec), -1) {
		documented = append(documented, m[1])
	}
	require.NotEmpty(t, documented, "wire/spec.md has no feature table")

	_, addr := startServer(t, newController(t, Config{}), ServerConfig{}, "unix")
	c, hello, err := wire.Dial(context.Background(), addr, &wirepb.Hello{Role: "client"}, wire.ConnConfig{})
	require.NoError(t, err)
	defer c.Close()
	assert.ElementsMatch(t, documented, hello.Features)
}
