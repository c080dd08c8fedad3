package resp

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pieces gives its parts one read each, then io.EOF.
type pieces struct{ parts [][]byte }

func (p *pieces) Read(b []byte) (int, error) {
	for len(p.parts) > 0 && len(p.parts[0]) == 0 {
		p.parts = p.parts[1:]
	}
	if len(p.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.parts[0])
	p.parts[0] = p.parts[0][n:]
	return n, nil
}

// readPieces reads the commands of parts, sent as that many reads, with
// limit as the bound on an inline line before AUTH (authed false), and
// says what it read: each command's arguments, then the error that ended
// it.
func readPieces(t testing.TB, authed bool, limit int, parts ...[]byte) string {
	r := newReader(&pieces{parts: parts}, 1<<16)
	r.authed, r.unauthBulk = authed, limit-unauthInlineRoom
	var out strings.Builder
	for range 1000 {
		args, err := r.next()
		if err != nil {
			var pe *errProtocol
			if !errors.As(err, &pe) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error %v", err)
			}
			fmt.Fprintf(&out, "error %v", err)
			break
		}
		fmt.Fprintf(&out, "%q\n", args)
		r.done()
	}
	return out.String()
}

// cut is in cut at each of at (in order), as that many reads.
func cut(in []byte, at ...int) [][]byte {
	var parts [][]byte
	from := 0
	for _, c := range at {
		c = min(max(c, from), len(in))
		parts = append(parts, in[from:c])
		from = c
	}
	return append(parts, in[from:])
}

// short is s, cut to a length a failure can print.
func short(s string) string {
	if len(s) > 200 {
		return s[:100] + fmt.Sprintf("…(%d bytes)…", len(s)-200) + s[len(s)-100:]
	}
	return s
}

// TestLineSplitAcrossReads checks that the reader reads the same
// commands (or refuses the same line) however the input is cut across
// reads, at every byte, the CR of a line's end in one read and its LF
// in the next included, and a byte a read: a line refused only because
// its bytes came without their LF would be taken whole. Before, a line of
// one byte past its limit and a bare LF was taken in one read, refused
// in two.
func TestLineSplitAcrossReads(t *testing.T) {
	const limit = 40 // before AUTH: an inline command's bound
	a := func(n int) string { return strings.Repeat("a", n) }
	for _, in := range []string{
		"PING " + a(limit-5) + "\r\n", // at the limit
		"PING " + a(limit-5) + "\n",
		"PING " + a(limit-4) + "\r\n", // one past it
		"PING " + a(limit-4) + "\n",
		"PING " + a(limit-5) + "\r\r\n", // a CR more before the CRLF
		"PING " + a(limit-6) + "\r\r\n",
		"PING " + a(limit-5) + "\rx\r\n", // a lone CR at the limit
		"PING " + a(10) + "\r" + a(10) + "\r\n",
		"PING " + a(limit-5) + "\r",
		"PING " + a(limit-4),
		"PING\r\nPING\nECHO x\r\n*1\r\n$4\r\nPING\r\n", // a pipeline
		"*1\r\n$" + strings.Repeat("1", 32) + "\r\n",   // a length at its limit (32)
		"*1\r\n$" + strings.Repeat("1", 33) + "\r\n",
		"*1\r\n$" + strings.Repeat("1", 32) + "\n",
		"*1\r\n$" + strings.Repeat("1", 33) + "\n",
		"*" + strings.Repeat("1", 31) + "\r\r\n",
		"*2\r\n$4\r\nECHO\r\n$2\nhi\r\n",
		"*1\r\n$4\r\nPI\rG\r\n",
		"*1\r\n$4\r\nPING\r\nPING\r",
	} {
		for _, authed := range []bool{false, true} {
			whole := readPieces(t, authed, limit, []byte(in))
			for at := range len(in) {
				got := readPieces(t, authed, limit, cut([]byte(in), at)...)
				require.Equal(t, whole, got, "%q (authed %v) cut at %d", in, authed, at)
			}
			var bytes [][]byte
			for i := range len(in) {
				bytes = append(bytes, []byte(in[i:i+1]))
			}
			require.Equal(t, whole, readPieces(t, authed, limit, bytes...), "%q (authed %v) a byte a read", in, authed)
		}
	}
}

// TestLineLimitWithABareLF checks that a line ended by a bare LF has the
// limit of one ended by CRLF on what comes before its end: a line of
// limit bytes is taken, one byte more is refused.
func TestLineLimitWithABareLF(t *testing.T) {
	for _, tc := range []struct {
		authed bool
		limit  int
	}{{false, maxUnauthBulk + unauthInlineRoom}, {true, maxInline}} {
		for _, end := range []string{"\n", "\r\n"} {
			line := "PING " + strings.Repeat("a", tc.limit-5)
			got := readPieces(t, tc.authed, maxUnauthBulk+unauthInlineRoom, []byte(line+end))
			assert.True(t, strings.HasSuffix(got, "error EOF"), "%d bytes and %q: %s", len(line), end, short(got))
			got = readPieces(t, tc.authed, maxUnauthBulk+unauthInlineRoom, []byte(line+"a"+end))
			assert.Equal(t, fmt.Sprintf("error Protocol error: line longer than %d bytes", tc.limit), short(got),
				"%d bytes and %q", len(line)+1, end)
		}
	}
}
