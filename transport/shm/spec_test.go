package shm

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wire/spec.md states the largest payload a ring carries in its frames.
func TestSpecStatesInlineMax(t *testing.T) {
	b, err := os.ReadFile("../../wire/spec.md")
	require.NoError(t, err)
	spec := strings.Join(strings.Fields(string(b)), " ")
	assert.Contains(t, spec, fmt.Sprintf("and does for at most %d KiB (transport/shm `InlineMax`)", InlineMax>>10))
}
