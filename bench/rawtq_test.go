package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// rawTQ is a minimal client of TQ's own protocol, the counterpart of the
// minimal RESP client (respConn): one connection to the controller, one
// request at a time, written and then answered in the caller's
// goroutine (no reader goroutine, no multiplexing, no placement, no
// batch): KV_SET and KV_GET_VALUE of one opaque field. Next to the Go
// client's rows it tells what the client costs from what the server does.
type rawTQ struct {
	nc  net.Conn
	br  *bufio.Reader
	out []byte
	hb  [wire.HeaderSize]byte
	id  uint64
	set wirepb.KVSetRequest
	get wirepb.KVGetValueRequest
}

// dialRawTQ connects to a controller at addr (host:port or tcp://) and
// shakes hands as a client on another host.
func dialRawTQ(addr string) (*rawTQ, error) {
	network, address, err := wire.ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	nc, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	c := &rawTQ{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	hello := &wirepb.Hello{Role: "client", HostId: "bench-another-host", Version: wire.Version}
	if _, err := c.do(wire.OpHello, hello, nil, nil); err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return c, nil
}

func (c *rawTQ) close() error { return c.nc.Close() }

// setValue stores val as field v of key in partition.
func (c *rawTQ) setValue(partition, key string, val []byte) error {
	c.set.Partition, c.set.Key, c.set.Field = partition, key, "v"
	_, err := c.do(wire.OpKVSet, &c.set, val, nil)
	return err
}

// getValue reads field v of key in partition into buf (which must hold
// it) and returns it.
func (c *rawTQ) getValue(partition, key string, buf []byte) ([]byte, error) {
	c.get.Partition, c.get.Key, c.get.Field, c.get.MaxBytes = partition, key, "v", uint64(len(buf))
	return c.do(wire.OpKVGetValue, &c.get, nil, buf)
}

// do writes one request (header, body and payload in one write) and reads
// its reply: the payload into into, which it returns resliced.
func (c *rawTQ) do(op wire.Op, body proto.Message, payload, into []byte) ([]byte, error) {
	c.id++
	b, err := proto.MarshalOptions{}.MarshalAppend(append(c.out[:0], make([]byte, wire.HeaderSize)...), body)
	if err != nil {
		return nil, err
	}
	wire.Header{Version: wire.Version, Op: op, ID: c.id, BodyLen: uint32(len(b) - wire.HeaderSize), PayloadLen: uint64(len(payload))}.Append(b[:0])
	c.out = append(b, payload...)
	if _, err := c.nc.Write(c.out); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c.br, c.hb[:]); err != nil {
		return nil, err
	}
	h, err := wire.DecodeHeader(c.hb[:])
	switch {
	case err != nil:
		return nil, err
	case h.Flags&wire.FlagReply == 0 || h.ID != c.id:
		return nil, fmt.Errorf("%v: a frame that is not its reply (op %v, id %d)", op, h.Op, h.ID)
	case h.PayloadLen > uint64(len(into)):
		return nil, fmt.Errorf("%v: reply payload of %d bytes, room for %d", op, h.PayloadLen, len(into))
	}
	replyBody, err := c.br.Peek(int(h.BodyLen))
	if err != nil {
		return nil, err
	}
	if h.Flags&wire.FlagError != 0 {
		var e wirepb.Error
		if err := proto.Unmarshal(replyBody, &e); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%v: %w", op, wire.FromReply(&e))
	}
	c.br.Discard(int(h.BodyLen))
	into = into[:h.PayloadLen]
	_, err = io.ReadFull(c.br, into)
	return into, err
}

// runRawTQSmallKV is runSmallKV through rawTQ connections (KV_SET,
// KV_GET_VALUE).
func runRawTQSmallKV(b *testing.B, conns []*rawTQ, size int) float64 {
	vals := make([][]byte, len(conns))
	bufs := make([][]byte, len(conns))
	for w := range vals {
		vals[w], bufs[w] = make([]byte, size), make([]byte, size)
	}
	return runSmallKV(b, size, vals, func(w int, key string, val []byte, lat latencies) ([]byte, func(), error) {
		c := conns[w]
		t0 := time.Now()
		if err := c.setValue("small", key, val); err != nil {
			return nil, nil, err
		}
		t1 := time.Now()
		got, err := c.getValue("small", key, bufs[w])
		lat.add(0, t1.Sub(t0))
		lat.add(1, time.Since(t1))
		return got, nil, err
	})
}
