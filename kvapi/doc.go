// Package kvapi is TQ's Redis-style API: string keys within a partition,
// each holding a set of fields (columns) and a tag map.
//
//	kv := kvapi.New(cluster.Client)
//	kv.BatchPut(ctx, "train", []string{"a", "b"}, batch, tags)
//	kv.Put(ctx, "train", "a", oneRow, engine.Tags{"status": "done"}) // partial update, tag merge
//	got, _ := kv.BatchGet(ctx, "train", []string{"a", "b"}, "reward") // a field selection
//	defer got.Release()                                               // views over shared memory
//	list, _ := kv.List(ctx, "")                                       // every partition
//	kv.Clear(ctx, "train", []string{"a", "b"})                        // idempotent
//
// Tags are a status machine and an index as well:
//
//	kv.Put(ctx, "prompts", uid, nil, engine.Tags{"status": "pending"}) // a tag-only key
//	ok, cur, _ := kv.CompareAndSetTag(ctx, "prompts", uid, "status", "pending", "running")
//	kv.DeleteTags(ctx, "prompts", []string{uid}, "worker")
//	done, _ := kv.ListWhere(ctx, "", kvapi.In("status", "finished", "failure")) // filtered in the controller
//	cs, _ := kv.Changes(ctx, "prompts", cursor)                                 // waits for keys that changed
//
// [KV.BatchPut], [KV.Put], [KV.BatchGet], [KV.BatchGetByMeta], [KV.List] and
// [KV.Clear] have an Async form returning a [Future] (the other gets, the
// tag operations and [KV.ReservePut] do not). Unlike the reference
// system, unknown keys and unknown selected fields are errors that name
// them ([engine.ErrNotFound]), never silently dropped; an
// [engine.KeysError] in the error lists the unknown keys.
package kvapi
