package wire

// frameWriter is the single writer of a connection without a goroutine of
// its own: a caller that finds the socket idle becomes the writer and
// writes every queued frame (its own and any that arrive meanwhile) with
// writev, then steps down; callers that find it busy queue their frame and
// go on. This keeps one writer at a time (frames never interleave) and
// batching under load, and costs no goroutine hand-off when idle, which on
// a machine whose cross-CPU wake-ups take tens of microseconds is most of
// a small request's latency.

import (
	"net"
	"sync"
	"sync/atomic"
)

type frameWriter struct {
	nc      net.Conn
	onErr   func(error)   // called once, outside the lock, when a write fails
	writing atomic.Bool   // a writev is in progress
	written *atomic.Int64 // if set, counts the bytes written

	mu      sync.Mutex
	pending []*outFrame
	active  bool
	err     error // sticky: once set, frames fail at once
	bufs    net.Buffers
	batch   []*outFrame
}

func newFrameWriter(nc net.Conn, onErr func(error)) *frameWriter {
	return &frameWriter{nc: nc, onErr: onErr}
}

// send queues f and, if no one is writing, writes everything queued. f.written
// receives the outcome exactly once, by whoever writes (or fails) it.
func (w *frameWriter) send(f *outFrame) {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		f.written <- err
		return
	}
	w.pending = append(w.pending, f)
	if w.active {
		w.mu.Unlock()
		return
	}
	w.active = true
	for {
		batch := append(w.batch[:0], w.pending...)
		w.pending = w.pending[:0]
		if len(batch) == 0 || w.err != nil {
			w.active = false
			err := w.err
			for _, g := range w.pending {
				g.written <- err
			}
			w.pending = w.pending[:0]
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()

		bufs := w.bufs[:0]
		for _, g := range batch {
			bufs = append(bufs, g.buf)
			bufs = append(bufs, g.payload...)
		}
		wb := bufs
		w.writing.Store(true)
		n, err := wb.WriteTo(w.nc)
		w.writing.Store(false)
		if w.written != nil {
			w.written.Add(n)
		}
		for _, g := range batch {
			g.written <- err
		}
		clear(bufs) // do not pin payloads
		w.bufs, w.batch = bufs[:0], batch[:0]

		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = err
			w.mu.Unlock()
			w.onErr(err)
			w.mu.Lock()
		}
	}
}

// fail makes every queued and future frame fail with err.
func (w *frameWriter) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	pending := w.pending
	w.pending = nil
	w.mu.Unlock()
	for _, g := range pending {
		g.written <- err
	}
}
