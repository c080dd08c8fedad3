package auth

import (
	"crypto/sha256"
	"crypto/subtle"
)

// Equal tells whether a token sent, b, is the token a, in a time that
// tells nothing of either: it compares their SHA-256 digests, which have
// one length, in constant time. subtle.ConstantTimeCompare of the tokens
// themselves returns at once when their lengths differ, which tells a
// peer that times it the token's length.
func Equal(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}
