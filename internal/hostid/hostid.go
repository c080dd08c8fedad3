// Package hostid names the machine a process runs on, so that two
// processes can tell whether they share a host:
//
//	if peer.Host == hostid.ID() { /* same host: shared memory works */ }
//
// The name is the kernel's boot id unless $TQ_HOST_ID gives another. The
// override is for processes that share a kernel but must count as
// separate hosts — network namespaces standing in for machines in a
// multi-host rehearsal — since a boot id would make them try shared
// memory with each other. Pods on one Kubernetes node need no override:
// they share the node's boot id, and with it its shared memory.
package hostid

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Env names the variable that overrides the boot id.
const Env = "TQ_HOST_ID"

const maxLen = 128

type result struct {
	id  string
	err error
}

var id = sync.OnceValue(func() result { return resolve(os.Getenv(Env), bootID) })

func bootID() string {
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
}

// resolve returns the override when it is set and valid, else the boot
// id, with an error saying why an override was not taken.
func resolve(override string, boot func() string) result {
	if override == "" {
		return result{id: boot()}
	}
	if len(override) > maxLen {
		return result{id: boot(), err: fmt.Errorf("$%s is %d bytes, at most %d", Env, len(override), maxLen)}
	}
	// The id travels in protobuf strings, which a peer refuses to
	// decode unless they are UTF-8.
	if !utf8.ValidString(override) {
		return result{id: boot(), err: fmt.Errorf("$%s=%q is not valid UTF-8", Env, override)}
	}
	for _, r := range override {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return result{id: boot(), err: fmt.Errorf("$%s=%q holds %q: only printable characters without spaces", Env, override, r)}
		}
	}
	return result{id: override}
}

// ID returns this host's identity: $TQ_HOST_ID when set, else the
// kernel's boot id, which two processes share exactly when they run on
// the same booted host, or the host name where there is no boot id. It
// is safe for concurrent use.
func ID() string { return id().id }

// Check reports a $TQ_HOST_ID that was set but not taken (too long, not
// UTF-8, or with spaces or control characters); ID then gives the boot id. Servers
// and clients call it at start so that a mistyped override fails loudly
// rather than silently making hosts look alike.
func Check() error { return id().err }
