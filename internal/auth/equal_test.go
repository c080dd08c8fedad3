package auth

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEqual(t *testing.T) {
	tok := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name string
		a, b string
		want bool
	}{
		{"equal", tok, tok, true},
		{"one byte different", tok, tok[:63] + "c", false},
		{"a prefix", tok, tok[:63], false},
		{"longer", tok, tok + "a", false},
		{"different lengths", "s3cret", "wrong", false},
		{"empty against a token", tok, "", false},
		{"a token against empty", "", tok, false},
		{"both empty", "", "", true},
	} {
		assert.Equal(t, c.want, Equal(c.a, c.b), c.name)
	}
}
