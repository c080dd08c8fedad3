// Package embedded runs TQ in one process: a controller, storage units and
// a client wired together without sockets, for tests, demos and jobs that
// need nothing else. [New] starts such a [Cluster]; [Meta] and [Unit]
// adapt an in-process controller and storage unit to the client's
// [client.MetaService] and [client.DataUnit] for callers that wire their
// own.
//
// An in-process controller makes a change it is asked for (through
// [Meta] or [OneKey], and so through a Cluster's Client) whatever the
// caller's context says, even one that has ended: the context bounds only
// the wait for the change to be durable, where the controller has a
// journal (as in tq serve; a Cluster's lives in memory and does not
// wait). A put whose context ends during that wait returns an error
// saying it may have happened, and it has: the change stands. See [Meta].
//
// This package links the controller and storage servers into the program.
// A program that only reaches a cluster over the network needs package
// client alone.
//
//	cluster, err := embedded.New(embedded.DefaultConfig()) // controller + 2 storage units
//	if err != nil { … }
//	defer cluster.Close()
//	meta, _ := cluster.Client.PutNew(ctx, "train", batch)   // the batch API
//	kv := kvapi.New(cluster.Client)                          // or the KV API
//	kv.BatchPut(ctx, "train", keys, batch, tags)
//	used := cluster.Units[0].Stats().Used                    // the servers are at hand
package embedded
