package client

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Go client's numbers that wire/spec.md states are the code's.
func TestSpecStatesTheClientsNumbers(t *testing.T) {
	b, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	spec := strings.Join(strings.Fields(string(b)), " ")
	for _, phrase := range []string{
		fmt.Sprintf("The Go client sends puts of at most %d KiB this way, and asks gets for at most %d KiB", KVInlineMax>>10, KVInlineMax>>10),
		fmt.Sprintf("goroutines that share it over up to %d connections to the controller", defaultLanes),
	} {
		assert.True(t, strings.Contains(spec, phrase), "wire/spec.md does not state %q", phrase)
	}
}
