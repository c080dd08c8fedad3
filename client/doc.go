// Package client is TQ's low-level batch API: it asks the controller
// ([MetaService]) where rows are or should go and moves column bytes
// directly to and from storage units ([DataUnit]). The same API works
// embedded (controller and units in this process, see
// [github.com/tqgo/tq/embedded.New]) and, with other MetaService and
// DataUnit implementations, across processes.
//
//	e, _ := embedded.New(embedded.DefaultConfig())
//	defer e.Close()
//	meta, _ := e.Client.PutNew(ctx, "train", batch)      // new rows
//	m, _ := e.Client.GetMeta(ctx, client.MetaRequest{     // ready, unconsumed rows
//		Partition: "train", Task: "actor", Fields: []string{"prompt"}, BatchSize: 8})
//	data, _ := e.Client.Get(ctx, m)                       // views over shm, copies otherwise
//	defer data.Release()
//	v, _ := e.Client.GetView(ctx, m)                      // zero-copy views
//	defer v.Release()
//
// Placement is local-first by default (a put goes to a unit on the client's
// host while it has room, and spills its other rows to units with room) or
// hash (the rows spread over the units by bytes), over the units that are
// alive and not draining; either way a put waits for room only when no
// unit has any. The writes of a put and the reads of a get that span
// several units run at once, up to [Config.MaxUnitIO] per client. See
// place.go. [Client.Drain] takes a unit out of service and moves its
// cells to the others (tq unit drain); a read whose cells were moved since
// its meta was resolved follows them.
package client
