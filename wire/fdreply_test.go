package wire

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An fd socket reply that is not one says which way: its length, or its
// magic (it used to report a bad magic as a bad length, of the right 16
// bytes).
func TestBadFdReplySaysWhatIsWrong(t *testing.T) {
	good := FdReply{Status: FdOK, Size: 4096}.Append(nil)
	r, err := ParseFdReply(good)
	require.NoError(t, err)
	assert.Equal(t, uint64(4096), r.Size)
	_, err = ParseFdReply(good[:15])
	require.ErrorIs(t, err, ErrFrame)
	assert.ErrorContains(t, err, "fd reply of 15 bytes, not 16")
	bad := append([]byte("TQX1"), good[4:]...)
	_, err = ParseFdReply(bad)
	require.ErrorIs(t, err, ErrFrame)
	assert.ErrorContains(t, err, `fd reply starts with "TQX1", not "TQF1"`)
}
