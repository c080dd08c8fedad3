package client

import "time"

// SetKeepDial sets how often a RemoteMeta dialed from now on looks at
// its first lane (keepConnected), until the returned func restores it.
func SetKeepDial(d time.Duration) (restore func()) {
	old := keepDial
	keepDial = d
	return func() { keepDial = old }
}
