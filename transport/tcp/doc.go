// Package tcp is the data-plane transport for storage units reached over
// TCP or a unix socket: the framed protocol of package wire, with payloads
// written with writev straight from the caller's buffers and read from the
// socket straight into them, and large transfers striped over several
// connections.
//
//	tr := tcp.New(tcp.Config{Token: token})
//	defer tr.Close()
//	conn, err := tr.Dial(ctx, engine.PeerInfo{Unit: id, Addr: "tcp://10.0.0.7:7401"})
//	if err != nil { … }                       // unreachable, wrong token, another unit
//	addrs, err := conn.Write(ctx, [][][]byte{{col}}) // one extent made of one piece
//	dst := make([]byte, addrs[0].Len)
//	err = conn.Read(ctx, addrs, [][]byte{dst}) // engine.ErrNotFound once freed
//	err = conn.Free(ctx, addrs)
//
// Every failure is an [*engine.OpError] with Transport "tcp" and the
// unit's address as Peer.
package tcp
