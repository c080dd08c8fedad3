// Package wire is TQ's framed protocol: the control plane between clients,
// storage units and the controller, and the data plane between clients and
// storage units, over TCP or unix stream sockets. wire/spec.md is the
// protocol's complete description (frames, ops, handshake, error codes);
// the messages are in wire/proto.
//
// The package holds both sides of a connection and what they share:
//
//	Conn, Dial     a client connection: many calls in flight, replies
//	               matched by request id, payloads read straight into the
//	               caller's buffers, a keepalive that finds a silent peer
//	Server         the serving side: a handler per op, run on the read loop
//	               or in a goroutine of its own, replies combined by one
//	               writer per connection
//	hello, auth    the handshake: version, identity, features, and the
//	               token proof (the token itself never travels)
//	convert, codes protobuf to engine types and back, and the error code
//	               every engine error travels as (CodeOf, FromReply)
//	fd passing     the unix-socket side channel that hands shared-memory
//	               file descriptors to a client on the same host
//
// Every bound a peer could abuse (body and payload sizes, calls in flight,
// buffered bytes, handshake and frame timeouts) has a default here, and a
// peer that breaks one loses its connection, never the server.
package wire
