package kvapi_test

import (
	"context"
	"fmt"
	"log"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

// The README's example: four samples with input_ids and attention_mask,
// tagged with their training step.
func Example() {
	ctx := context.Background()
	cfg := embedded.DefaultConfig()
	cfg.Storage.Capacity = 16 << 20
	cluster, err := embedded.New(cfg) // controller + 2 storage units
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	kv := kvapi.New(cluster.Client)

	ids, _ := engine.DenseOf([]int64{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 3) // 4 rows of shape (3)
	mask, _ := engine.DenseOf([]int64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, 3)
	batch := engine.MustBatch(
		engine.Field{Name: "input_ids", Col: ids},
		engine.Field{Name: "attention_mask", Col: mask},
	)
	keys := []string{"1_0", "1_1", "1_2", "2_0"}
	tags := make([]engine.Tags, len(keys))
	for i := range tags {
		tags[i] = engine.Tags{"global_steps": 1, "status": "running", "model_version": 1}
	}
	if _, err := kv.BatchPut(ctx, "test", keys, batch, tags); err != nil {
		log.Fatal(err)
	}

	list, _ := kv.List(ctx, "test") // keys in creation order, with their tags
	for _, e := range list["test"] {
		fmt.Println(e.Key, e.Tags["status"])
	}

	all, err := kv.BatchGet(ctx, "test", keys) // every field the keys hold
	if err != nil {
		log.Fatal(err)
	}
	row, _ := engine.Row[int64](all.Col("input_ids"), 1)
	fmt.Println(row)

	// Update one field of one key, and merge into its tag.
	newIDs, _ := engine.DenseOf([]int64{40, 50, 60}, 3)
	one := engine.MustBatch(engine.Field{Name: "input_ids", Col: newIDs})
	m, _ := kv.Put(ctx, "test", "1_1", one, engine.Tags{"status": "done"})
	fmt.Println(m.Tags[0]["status"], m.Tags[0]["global_steps"])

	sel, _ := kv.BatchGet(ctx, "test", []string{"1_0", "1_1"}, "input_ids") // a field selection
	vals, _ := engine.Values[int64](sel.Col("input_ids"))
	fmt.Println(sel.Names(), vals)

	fmt.Println(kv.Clear(ctx, "test", keys)) // idempotent
	// Output:
	// 1_0 running
	// 1_1 running
	// 1_2 running
	// 2_0 running
	// [7 8 9]
	// done 1
	// [input_ids] [4 5 6 40 50 60]
	// <nil>
}

// Prompts as tag-only keys moving through a status machine: workers claim
// one with compare-and-set, a replay buffer follows the changes and lists
// the finished ones.
func Example_statusMachine() {
	ctx := context.Background()
	cfg := embedded.DefaultConfig()
	cfg.Storage.Capacity = 16 << 20
	cluster, err := embedded.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	kv := kvapi.New(cluster.Client)

	for _, uid := range []string{"u1", "u2"} {
		kv.Put(ctx, "prompts", uid, nil, engine.Tags{"status": "pending"})
	}
	cs, _ := kv.Changes(ctx, "prompts", nil) // every key so far
	fmt.Println(len(cs.Changes), "pending")

	// Two workers try to claim u1: one wins.
	ok, _, _ := kv.CompareAndSetTag(ctx, "prompts", "u1", "status", "pending", "running")
	fmt.Println("first claim:", ok)
	ok, cur, _ := kv.CompareAndSetTag(ctx, "prompts", "u1", "status", "pending", "running")
	fmt.Println("second claim:", ok, cur)
	kv.CompareAndSetTag(ctx, "prompts", "u1", "status", "running", "finished")

	cs, _ = kv.Changes(ctx, "prompts", cs.Cursor) // returns at once: u1 changed
	for _, c := range cs.Changes {
		fmt.Println("changed:", c.Key, c.Tags["status"])
	}
	done, _ := kv.ListWhere(ctx, "prompts", kvapi.Eq("status", "finished"))
	fmt.Println("finished:", done["prompts"][0].Key)
	// Output:
	// 2 pending
	// first claim: true
	// second claim: false running
	// changed: u1 finished
	// finished: u1
}
