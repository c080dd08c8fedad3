package wire

// frameWriter is the single writer of a connection without a goroutine of
// its own: a caller that finds the socket idle becomes the writer and
// writes every queued frame (its own and any that arrive meanwhile) with
// writev, then steps down; callers that find it busy queue their frame and
// go on. This keeps one writer at a time (frames never interleave) and
// batching under load, and costs no goroutine hand-off when idle, which on
// a machine whose cross-CPU wake-ups take tens of microseconds is most of
// a small request's latency.
//
// A client's caller (sendWithin) steps down early, once its own frame is
// written, when what others queued meanwhile is large or its context is
// about to end: a goroutine writes the rest, so that the caller's Do
// returns in time. A few small frames written together stay with the
// caller: batching them costs it little, and a hand-off on every batch
// would cost the latency this design saves.
//
// A writer with a timeout (the server's, and a client's unless its
// WriteTimeout is negative) writes in chunks of at most writeChunk bytes,
// each with a write deadline: a peer that stops reading fails the write,
// and with it the connection, instead of holding the writer (and every
// handler or caller waiting on it) forever. A client's writer bounds a
// stall rather than a chunk (progress).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

type frameWriter struct {
	nc      net.Conn
	onErr   func(error)   // called once, outside the lock, when a write fails
	writing atomic.Bool   // a writev is in progress
	written *atomic.Int64 // if set, counts the bytes written
	writes  *atomic.Int64 // if set, counts the batches written (a writev each, unless chunked)
	timeout time.Duration // if set, each chunk's write deadline
	// progress makes timeout a bound on a stall rather than on a chunk:
	// a write that hit its deadline having moved bytes goes on under a
	// new one. A client's writer has it (its server's back-pressure, a
	// WRITE waiting for room before it reads its payload, may add up
	// within a chunk); a server's has not, so that a peer reading a byte
	// now and then cannot hold a reply for ever.
	progress bool
	// deadline is the write deadline the socket has (see write); only the
	// active writer touches it.
	deadline time.Time
	// bg, if set, counts the goroutines that callers of sendWithin leave
	// the writing to.
	bg *sync.WaitGroup

	mu      sync.Mutex
	pending []*outFrame
	queued  int // bytes of pending frames
	active  bool
	corked  bool  // frames queue until uncork (see cork), up to maxCorked bytes
	err     error // sticky: once set, frames fail at once
	bufs    net.Buffers
	batch   []*outFrame
	chunk   net.Buffers // the part of bufs being written (with a timeout)
	wb      net.Buffers // what WriteTo consumes; a field, so it does not escape per write
	flat    []byte      // small batches copied together (see write)
}

// writeChunk bounds the bytes written under one write deadline.
const writeChunk = 4 << 20

// maxCorked bounds the bytes cork holds back: past it frames go out as
// they are sent. A read of the socket may hold thousands of small
// requests whose replies are large (a value each), which would otherwise
// all be held in memory until the read loop's next read.
const maxCorked = 1 << 20

// size is the bytes f writes.
func (f *outFrame) size() int {
	n := len(f.buf)
	for _, p := range f.payload {
		n += len(p)
	}
	return n
}

func newFrameWriter(nc net.Conn, onErr func(error)) *frameWriter {
	return &frameWriter{nc: nc, onErr: onErr}
}

// send queues f and, if no one is writing and the writer is not corked,
// writes everything queued. f.written receives the outcome exactly once,
// by whoever writes (or fails) it, and then f.after runs. It reports
// whether f stays queued until uncork: its sender must not wait for it
// then (the server's read loop, which uncorks, may be that sender).
func (w *frameWriter) send(f *outFrame) (corked bool) {
	return w.sendWithin(nil, f)
}

// sendWithin is send for a caller whose wait ends with ctx (a client's
// Do): once f is written, the caller leaves what is still queued to a
// goroutine counted in w.bg when that is large or ctx is about to end
// (see handOff). A nil ctx, or no w.bg, writes until the queue is empty.
func (w *frameWriter) sendWithin(ctx context.Context, f *outFrame) (corked bool) {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		f.finish(err)
		return false
	}
	w.pending = append(w.pending, f)
	w.queued += f.size()
	if w.active || w.corked && w.queued <= maxCorked {
		corked = !w.active
		w.mu.Unlock()
		return corked
	}
	w.active = true
	w.drain(ctx)
	return false
}

// idle reports whether nothing is being written or waits to be, and no
// write failed.
func (w *frameWriter) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.active && len(w.pending) == 0 && w.err == nil
}

// cork holds frames sent from now on in the queue, to go out together at
// uncork: the server's read loop corks while it serves requests it has
// already read, so that their replies share a writev.
func (w *frameWriter) cork() {
	w.mu.Lock()
	w.corked = true
	w.mu.Unlock()
}

// uncork writes what cork held back (unless someone is writing, who
// writes it) and lets frames go out as they are sent again.
func (w *frameWriter) uncork() {
	w.mu.Lock()
	w.corked = false
	if w.active || len(w.pending) == 0 {
		w.mu.Unlock()
		return
	}
	w.active = true
	w.drain(nil)
}

// drain writes queued frames until none is left, with w.mu held and
// w.active set on entry; it releases both. With ctx (see sendWithin), it
// may leave what is queued after its first batch, which holds the
// caller's frame, to a goroutine.
func (w *frameWriter) drain(ctx context.Context) {
	others := 0 // bytes of others' frames written after the first batch
	for first := true; ; first = false {
		if !first && ctx != nil && w.bg != nil && w.err == nil && len(w.pending) > 0 && w.handOff(ctx, &others) {
			w.bg.Go(func() {
				w.mu.Lock()
				w.drain(nil)
			})
			w.mu.Unlock()
			return
		}
		batch := append(w.batch[:0], w.pending...)
		w.pending, w.queued = w.pending[:0], 0
		if len(batch) == 0 || w.err != nil {
			w.active = false
			err := w.err
			for _, g := range batch {
				g.finish(err)
			}
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()

		bufs := w.bufs[:0]
		for _, g := range batch {
			bufs = append(bufs, g.buf)
			bufs = append(bufs, g.payload...)
		}
		w.writing.Store(true)
		n, err := w.write(bufs)
		w.writing.Store(false)
		if w.written != nil {
			w.written.Add(n)
		}
		if w.writes != nil {
			w.writes.Add(1)
		}
		for _, g := range batch {
			g.finish(err)
		}
		clear(bufs) // do not pin payloads
		clear(batch)
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

// post queues f without waiting for it to be written: when nobody is
// writing, a goroutine counted in wg writes it, so the caller never blocks
// on the socket. It is counted under the lock that fail takes, so that a
// Wait after fail sees it. f is queued, and the writer taken for that
// goroutine, before post returns: frames sent after it go out after it
// (a CANCEL must reach the server before the calls made after it, which
// may find every request slot taken by the call it cancels).
func (w *frameWriter) post(f *outFrame, wg *sync.WaitGroup) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		f.finish(w.err)
		return
	}
	w.pending = append(w.pending, f)
	w.queued += f.size()
	if !w.active && (!w.corked || w.queued > maxCorked) {
		w.active = true
		wg.Go(func() {
			w.mu.Lock()
			w.drain(nil)
		})
	}
}

// handOffMax is the most bytes of others' frames a caller of sendWithin
// writes after its own: about what a socket takes at once, so that it
// rarely blocks a caller for long.
const handOffMax = 64 << 10

// handOffMargin is how far from its end a caller's context must be for the
// caller to write others' frames.
const handOffMargin = time.Millisecond

// handOff reports whether a caller of sendWithin, whose own frame is
// written, leaves what is queued to a goroutine: when, with what it wrote
// for others already (counted in others), that is more than handOffMax
// bytes, or ctx is about to end. It runs with w.mu held.
func (w *frameWriter) handOff(ctx context.Context, others *int) bool {
	for _, g := range w.pending {
		*others += len(g.buf)
		for _, p := range g.payload {
			*others += len(p)
		}
	}
	if *others > handOffMax {
		return true
	}
	select {
	case <-ctx.Done():
		return true
	default:
	}
	d, ok := ctx.Deadline()
	return ok && time.Until(d) < handOffMargin
}

// unqueue takes f out of the queue if nobody has started writing it, and
// reports whether it did: f.written then receives nothing, and f is the
// caller's again.
func (w *frameWriter) unqueue(f *outFrame) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := slices.Index(w.pending, f)
	if i < 0 {
		return false
	}
	w.pending = slices.Delete(w.pending, i, i+1)
	w.queued -= f.size()
	return true
}

// flatMax is the most bytes a writer copies into one buffer to write
// with write(2) rather than writev(2).
const flatMax = 8 << 10

// write writes bufs, which it may modify, to the socket. With a timeout,
// a write of more than writeChunk bytes goes in chunks, each under the
// deadline.
func (w *frameWriter) write(bufs net.Buffers) (int64, error) {
	size := 0
	for _, b := range bufs {
		size += len(b)
	}
	if w.timeout > 0 {
		if size > writeChunk {
			return w.writeChunks(bufs)
		}
		w.renewDeadline()
	}
	if len(bufs) == 1 {
		return w.writeOne(bufs[0])
	}
	if size <= flatMax {
		// A small request and its payload (a KV put's value): one
		// plain write, cheaper than a vector of two, for a copy of a
		// few KiB.
		flat := w.flat[:0]
		for _, b := range bufs {
			flat = append(flat, b...)
		}
		w.flat = flat[:0]
		return w.writeOne(flat)
	}
	return w.writeVec(bufs)
}

// writeOne writes b with one write(2), going on past a deadline the
// write moved bytes under (see progress).
func (w *frameWriter) writeOne(b []byte) (int64, error) {
	var total int64
	for {
		n, err := w.nc.Write(b)
		total += int64(n)
		if err != nil && n < len(b) && w.goOn(n, err) {
			b = b[n:]
			continue
		}
		return total, w.timedOut(err)
	}
}

// writeVec writes bufs with writev(2), as writeOne.
func (w *frameWriter) writeVec(bufs net.Buffers) (int64, error) {
	var total int64
	w.wb = bufs
	defer func() { w.wb = nil }()
	for {
		n, err := w.wb.WriteTo(w.nc) // consumes what it wrote
		total += n
		if err != nil && len(w.wb) > 0 && w.goOn(int(n), err) {
			continue
		}
		return total, w.timedOut(err)
	}
}

// goOn reports whether a write that failed with err after n bytes goes
// on: it hit its deadline having moved bytes, and the writer bounds
// stalls (progress). It renews the deadline.
func (w *frameWriter) goOn(n int, err error) bool {
	if !w.progress || n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	w.deadline = time.Time{}
	w.renewDeadline()
	return true
}

// timedOut says what a write deadline's error means.
func (w *frameWriter) timedOut(err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the peer stopped taking bytes (write timeout %v): %w", w.timeout, err)
	}
	return err
}

// renewDeadline keeps the socket's write deadline at least timeout ahead.
// It is set a quarter beyond the timeout and renewed once that margin is
// used up: a write that blocks fails within 1.25 × timeout, and a busy
// connection updates no timer per write. With progress, a write that
// moved bytes before its deadline goes on under a new one, so a stall is
// found at most 2.5 × timeout after the peer took its last byte.
func (w *frameWriter) renewDeadline() {
	if now := time.Now(); w.deadline.Sub(now) < w.timeout {
		w.deadline = now.Add(w.timeout + w.timeout/4)
		w.nc.SetWriteDeadline(w.deadline)
	}
}

// writeChunks writes bufs writeChunk bytes at a time, each under the
// deadline.
func (w *frameWriter) writeChunks(bufs net.Buffers) (int64, error) {
	var total int64
	for len(bufs) > 0 {
		chunk, size := w.chunk[:0], 0
		for len(bufs) > 0 && size < writeChunk {
			b := bufs[0]
			if k := writeChunk - size; len(b) > k {
				chunk = append(chunk, b[:k])
				bufs[0] = b[k:]
				break
			}
			chunk = append(chunk, b)
			size += len(b)
			bufs = bufs[1:]
		}
		w.renewDeadline()
		n, err := w.writeVec(chunk)
		clear(chunk) // do not pin payloads
		w.chunk = chunk[:0]
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// fail makes every queued and future frame fail with err.
func (w *frameWriter) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	pending := w.pending
	w.pending, w.queued = nil, 0
	w.mu.Unlock()
	for _, g := range pending {
		g.finish(err)
	}
}
