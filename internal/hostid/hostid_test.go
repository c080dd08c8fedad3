package hostid

import (
	"os"
	"strings"
	"testing"
)

func TestID(t *testing.T) {
	id := ID()
	if id == "" {
		t.Fatal("ID() is empty")
	}
	if again := ID(); again != id {
		t.Fatalf("ID() changed from %q to %q", id, again)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		if want := strings.TrimSpace(string(b)); id != want {
			t.Fatalf("ID() = %q, want the boot id %q", id, want)
		}
	}
}
