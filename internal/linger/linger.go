// Package linger ends a connection without losing the last thing written
// to it.
//
// A TCP socket closed while input it has not read waits in its receive
// queue sends a reset instead of an orderly end, and the reset discards
// what the closing side wrote but the network had not carried yet. A
// server that answers a request from its header (a refusal, an error that
// names what was wrong) and closes while the client is still sending the
// rest can lose its answer that way, and the client, still writing, sees
// its write fail with a reset: a client that stops at a failed write
// (redis-py does) never reads the reason.
//
// Drain closes the sending side instead, so that the peer reads the answer
// and then the end, and reads and drops what the peer still sends until
// it closes too, or for a bounded time; the caller closes the connection
// afterwards. This is what HTTP servers call a lingering close.
package linger

import (
	"io"
	"net"
	"time"
)

// Time is how long Drain waits for the peer to close at most: a client
// streaming a large request at loopback or LAN speeds sends what is left
// of 64 MiB in well under it.
const Time = 2 * time.Second

// Drain shuts nc's sending side (on a connection that has one to shut:
// TCP and unix sockets) and reads and discards its input until the peer
// closes, the read fails (nc closed by someone else), or d has passed. It
// does not close nc. It returns the bytes it discarded.
func Drain(nc net.Conn, d time.Duration) int64 {
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return 0 // nothing to linger for: the caller's close ends it
	}
	nc.SetReadDeadline(time.Now().Add(d))
	n, _ := io.Copy(io.Discard, nc)
	return n
}
