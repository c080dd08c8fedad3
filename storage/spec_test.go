package storage

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/internal/shmring"
	"github.com/tqgo/tq/wire"
)

// A storage unit's limits, defaults and fd socket statuses are the ones
// wire/spec.md states: each phrase, made from the constant, is in it
// (white space folded).
func TestSpecStatesTheUnitsLimits(t *testing.T) {
	b, err := os.ReadFile("../wire/spec.md")
	require.NoError(t, err)
	spec := strings.Join(strings.Fields(string(b)), " ")
	s := func(d time.Duration) int { return int(d / time.Second) }
	for _, phrase := range []string{
		fmt.Sprintf("(up to its reserve wait, %d s by default, `tq serve --reserve-wait`)", s(DefaultReserveWait)),
		fmt.Sprintf("minimum write rate (%d MiB/s unless", DefaultMinWriteRate>>20),
		fmt.Sprintf("(the unit's reserve timeout, %d s unless configured otherwise", s(DefaultReserveTimeout)),
		fmt.Sprintf("(%d s by default, `tq serve --shm-quarantine`)", s(DefaultQuarantine)),
		fmt.Sprintf("A connection may hold at most %d reservations and leases at once", MaxSessionHolds),
		fmt.Sprintf("more than %d reservations and leases on one connection", MaxSessionHolds),
		fmt.Sprintf("(%d connections are waiting for their request already", maxFdPending),
		fmt.Sprintf("(ring size 0: the unit's default, %d KiB)", shmring.DefaultRingSize>>10),
		fmt.Sprintf("A page lists at most a bounded number of extents (%d by default)", DefaultReconcilePage),
		fmt.Sprintf("(not full), every %d s by default", s(DefaultReconcileInterval)),
		fmt.Sprintf("reconcile grace ago (%d s by default)", s(DefaultReconcileGrace)),
		fmt.Sprintf("| size u64 (%d bytes, one sendmsg)", wire.FdReplySize),
		fmt.Sprintf("request \"%s\" | segment u32 | token length u16", wire.FdMagic),
		fmt.Sprintf("or \"%s\" | segment u32 | incarnation u64", wire.FdMagicInc),
		fmt.Sprintf("request \"%s\" | ring size u32", wire.FdRingMagic),
		fmt.Sprintf("`status`: %d ok, %d wrong or missing token", wire.FdOK, wire.FdUnauthenticated),
		fmt.Sprintf("%d no live segment with that id, %d malformed request, %d the unit is closing, %d the unit is busy",
			wire.FdNotFound, wire.FdBadRequest, wire.FdClosed, wire.FdBusy),
		fmt.Sprintf("%d another run of the unit than the `TQF2` request names", wire.FdNotThisUnit),
		fmt.Sprintf("`status` as above, plus %d: the unit offers no ring", wire.FdNotSupported),
	} {
		assert.True(t, strings.Contains(spec, phrase), "wire/spec.md does not state %q", phrase)
	}
}
