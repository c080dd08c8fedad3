package rdma

import (
	"strings"
	"testing"
)

// TestFirstUnposted: the index of the first work request not posted comes
// from the driver; one out of range must not slice the chain out of range
// (a panic), but read as none posted, with an error naming the values.
func TestFirstUnposted(t *testing.T) {
	for _, tc := range []struct {
		bad, n, want int
		err          string
	}{
		{bad: 0, n: 4, want: 0},
		{bad: 3, n: 4, want: 3},
		{bad: 4, n: 4, want: 4},
		{bad: 5, n: 4, want: 0, err: "work request 5 of a chain of 4"},
		{bad: -1, n: 4, want: 0, err: "work request -1 of a chain of 4"},
		{bad: 1 << 30, n: 1, want: 0, err: "work request 1073741824 of a chain of 1"},
	} {
		got, err := firstUnposted(tc.bad, tc.n)
		if got != tc.want {
			t.Errorf("firstUnposted(%d, %d) = %d, want %d", tc.bad, tc.n, got, tc.want)
		}
		chain := make([]WR, tc.n)
		_ = chain[got:] // in range
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("firstUnposted(%d, %d): got error %v, want none", tc.bad, tc.n, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("firstUnposted(%d, %d): got error %v, want one naming %q", tc.bad, tc.n, err, tc.err)
		}
	}
}
