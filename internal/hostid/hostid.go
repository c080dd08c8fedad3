// Package hostid names the machine a process runs on, so that two
// processes can tell whether they share a host:
//
//	if peer.Host == hostid.ID() { /* same host: shared memory works */ }
package hostid

import (
	"os"
	"strings"
	"sync"
)

var id = sync.OnceValue(func() string {
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
})

// ID returns the kernel's boot id, which two processes share exactly when
// they run on the same booted host, or the host name where there is no
// boot id. It is safe for concurrent use.
func ID() string { return id() }
