package engine

import (
	"fmt"
	"unicode/utf8"
)

// MaxNameBytes bounds a name — a key, a partition id, a field or task
// name — in UTF-8 bytes: a request that would make a longer one is
// refused ([ErrInvalid]), so that no peer can make the controller keep,
// log and send back in every listing names of megabytes. 64 KiB, as
// Cassandra bounds its keys: far above any real name.
const MaxNameBytes = 64 << 10

// CheckNameSize refuses a name longer than [MaxNameBytes] with an error
// wrapping [ErrInvalid] that says what it is (kind: "key", "partition",
// "field", "task"…), its length and the limit, quoting only its first
// bytes. nil for any shorter name.
func CheckNameSize[T ~string | ~[]byte](kind string, name T) error {
	if len(name) <= MaxNameBytes {
		return nil
	}
	return fmt.Errorf("%s %q… is %d bytes long, past the limit of %d (engine.MaxNameBytes): %w",
		kind, namePrefix(name, 32), len(name), MaxNameBytes, ErrInvalid)
}

// namePrefix is the first n bytes of a name, fewer to end on a rune
// boundary when it is UTF-8.
func namePrefix[T ~string | ~[]byte](name T, n int) string {
	if len(name) <= n {
		return string(name)
	}
	end := n
	for end > n-utf8.UTFMax && !utf8.RuneStart(name[end]) {
		end--
	}
	return string(name[:end])
}
