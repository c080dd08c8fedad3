// Package resp serves the Redis protocol (RESP2) over a controller and
// the storage units of the same process, so that redis-cli,
// redis-benchmark, redis-py, go-redis and other Redis clients read and
// write TQ's data (`tq serve --resp ADDR`, `--resp-socket PATH`).
// wire/resp.md documents the mapping: a connection's partition, a key's
// fields as hash fields with one default field for SET and GET, dense
// fields as their little-endian bytes, tags through the TQ.* commands,
// and how each TQ error becomes a Redis one.
//
// Commands are read by this package's own RESP reader (reader.go) under
// its bounds: argument counts and sizes, smaller ones before AUTH, large
// values in memory of their own counted against a budget; replies are
// written with github.com/tidwall/redcon's encoders. Small commands are
// served by event loops (by default one per two cores, loop.go), as Redis
// serves its own; a connection that sends anything else (a large value,
// a command that would wait, input that is not plain RESP) moves to a
// goroutine of its own for good.
package resp
