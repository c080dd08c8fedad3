package hostid

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestID(t *testing.T) {
	id := ID()
	if id == "" {
		t.Fatal("ID() is empty")
	}
	if again := ID(); again != id {
		t.Fatalf("ID() changed from %q to %q", id, again)
	}
	if os.Getenv(Env) != "" {
		return
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		if want := strings.TrimSpace(string(b)); id != want {
			t.Fatalf("ID() = %q, want the boot id %q", id, want)
		}
	}
}

func TestOverride(t *testing.T) {
	boot := func() string { return "boot" }
	r := resolve("", boot)
	assert.Equal(t, "boot", r.id)
	assert.NoError(t, r.err)

	r = resolve("host-a.rack7", boot)
	assert.Equal(t, "host-a.rack7", r.id)
	assert.NoError(t, r.err)

	// "host\xff" is not UTF-8: the override travels in the Hello's
	// host_id, a proto3 string, which a peer refuses to decode
	// ("string field contains invalid UTF-8"), so every handshake
	// would fail with no word of the variable.
	for _, bad := range []string{"host a", "host\x00", "tab\there", strings.Repeat("x", maxLen+1), "host\xff", "\xc3"} {
		r = resolve(bad, boot)
		assert.Equal(t, "boot", r.id, "a bad override %q falls back to the boot id", bad)
		require.Error(t, r.err, "override %q", bad)
		assert.Contains(t, r.err.Error(), Env)
	}
}
