package controller

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// durability.md, "State files": a count a state file claims (the
// header's partitions, a partition's rows) that the rest of the file
// cannot hold is refused as damage, naming it, before it sizes anything:
// a hand-made file of a few hundred bytes claiming 2^31 entries used to
// pre-size a map of 2M keys.
func TestStateFileCountPastItsBytesIsRefused(t *testing.T) {
	c := newController(t, DefaultConfig())
	putTags(t, c, "p", []string{"a", "b"}, engine.Tags{"n": 1}, engine.Tags{"n": 2})
	dir := filepath.Join(t.TempDir(), "ck")
	require.NoError(t, c.Save(dir))
	orig, err := os.ReadFile(filepath.Join(dir, stateFile))
	require.NoError(t, err)

	// claim rewrites message i of orig (0: the header, 1: the partition)
	// and reseals the file: its checksum agrees, its count does not.
	claim := func(i int, m proto.Message, edit func()) []byte {
		var msgs [][]byte
		for b := orig; len(b) > 0; {
			n, k := binary.Uvarint(b)
			require.Positive(t, k)
			msgs, b = append(msgs, b[k:k+int(n)]), b[k+int(n):]
		}
		require.NoError(t, proto.Unmarshal(msgs[i], m))
		edit()
		msgs[i], err = proto.Marshal(m)
		require.NoError(t, err)
		var out []byte
		for _, m := range msgs {
			out = binary.AppendUvarint(out, uint64(len(m)))
			out = append(out, m...)
		}
		return resealState(out)
	}
	head, sp := &wirepb.StateHeader{}, &wirepb.StatePartition{}
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"partitions", claim(0, head, func() { head.Partitions = 1 << 31 }),
			`^header at byte 0: .*2147483648 partitions claimed, more than the \d+ bytes left in the file can hold`},
		{"rows", claim(1, sp, func() { sp.Rows, sp.KeySeq = 1<<31, 1<<31 }),
			`^partition at byte \d+: .*2147483648 rows of partition "p" claimed, more than the \d+ bytes left in the file can hold`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Less(t, len(tc.file), 1<<10)
			var err error
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = readState(bytes.NewReader(tc.file), int64(len(tc.file)))
			runtime.ReadMemStats(&after)
			require.ErrorIs(t, err, engine.ErrCorrupt)
			require.Regexp(t, tc.want, err.Error())
			// The reader's buffers take 2 MiB; a map sized by the claim,
			// tens.
			require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "bytes allocated to refuse the file")
		})
	}
}
