package wire

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// allDTypes lists every valid dtype.
func allDTypes() []engine.DType {
	var out []engine.DType
	for d := engine.InvalidDType + 1; d.Valid(); d++ {
		out = append(out, d)
	}
	return out
}

// remarshal marshals m and unmarshals it into a fresh message of its type.
func remarshal[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	out := m.ProtoReflect().New().Interface().(M)
	require.NoError(t, proto.Unmarshal(b, out))
	return out
}

// Every dtype crosses the wire by name, in schemas and commits alike.
func TestDTypesRoundTrip(t *testing.T) {
	for _, d := range allDTypes() {
		t.Run(d.String(), func(t *testing.T) {
			require.Equal(t, d.String(), DTypeToPB(d))
			got, err := DTypeFromPB(DTypeToPB(d))
			require.NoError(t, err)
			require.Equal(t, d, got)

			kind := engine.Dense
			if d == engine.Bytes {
				kind = engine.Opaque
			}
			s := engine.FieldSchema{DType: d, Kind: kind}
			if kind == engine.Dense {
				s.Shape = engine.Shape{2, 3}
			}
			gs, err := SchemaFromPB(remarshal(t, SchemaToPB(s)))
			require.NoError(t, err)
			assert.Equal(t, s, gs)

			cf := []engine.CommitField{{Name: "x", DType: d, Kind: kind, Shape: s.Shape, Locs: []engine.CellLoc{
				{Unit: 1, Addr: engine.RemoteAddr{Segment: 1, Gen: 1, Offset: 64, Len: uint64(6 * d.Size())}},
			}}}
			pb := CommitFieldsToPB(cf)
			for i := range pb {
				pb[i] = remarshal(t, pb[i])
			}
			gcf, err := CommitFieldsFromPB(pb, 1)
			require.NoError(t, err)
			assert.Equal(t, cf, gcf)
		})
	}
	for _, bad := range []string{"float8_e4m3", "uint128", "Complex64"} {
		_, err := DTypeFromPB(bad)
		assert.ErrorIs(t, err, engine.ErrInvalid, "dtype %q", bad)
		_, err = SchemaFromPB(&wirepb.FieldSchema{Dtype: bad, Kind: "dense"})
		assert.ErrorIs(t, err, engine.ErrInvalid, "schema of dtype %q", bad)
	}
}

// spec.md lists every dtype name, and no other.
func TestSpecListsDTypes(t *testing.T) {
	spec, err := os.ReadFile("spec.md")
	require.NoError(t, err)
	m := regexp.MustCompile("\\*\\*dtype\\*\\* strings: `([^`]*)`").FindSubmatch(spec)
	require.NotNil(t, m, "spec.md has no dtype list")
	var want []string
	for _, d := range allDTypes() {
		want = append(want, d.String())
	}
	assert.ElementsMatch(t, want, strings.Fields(string(m[1])))
}
