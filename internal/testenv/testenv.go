// Package testenv holds test helpers about what the machine offers.
package testenv

import (
	"errors"
	"testing"

	"github.com/tqgo/tq/engine"
)

// SkipIfNotSupported skips the test when err wraps
// [engine.ErrNotSupported] (no device, no cgo, a build without the
// feature), with err's text as the reason. The bare sentinel fails the
// test instead: whoever returned it said nothing about what is missing.
// Any other non-nil error fails the test.
func SkipIfNotSupported(tb testing.TB, err error) {
	tb.Helper()
	switch {
	case err == nil:
	case err == engine.ErrNotSupported:
		tb.Fatalf("bare %v: the error must say what is missing", err)
	case errors.Is(err, engine.ErrNotSupported):
		tb.Skipf("not supported here: %v", err)
	default:
		tb.Fatal(err)
	}
}
