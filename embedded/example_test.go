package embedded_test

import (
	"context"
	"fmt"
	"log"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

// A cluster in this process, used through the batch API: put new rows,
// fetch them for a task, read them back.
func Example() {
	ctx := context.Background()
	cfg := embedded.DefaultConfig()
	cfg.Storage.Capacity = 16 << 20
	cluster, err := embedded.New(cfg) // controller + 2 storage units
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	prompts, _ := engine.DenseOf([]int64{1, 2, 3, 4}, 2) // 2 rows of shape (2)
	if _, err := cluster.Client.PutNew(ctx, "train", engine.MustBatch(engine.Field{Name: "prompt", Col: prompts})); err != nil {
		log.Fatal(err)
	}
	m, err := cluster.Client.GetMeta(ctx, client.MetaRequest{Partition: "train", Task: "actor", Fields: []string{"prompt"}, BatchSize: 2})
	if err != nil {
		log.Fatal(err)
	}
	data, err := cluster.Client.Get(ctx, m)
	if err != nil {
		log.Fatal(err)
	}
	defer data.Release()
	vals, _ := engine.Values[int64](data.Col("prompt"))
	fmt.Println(m.Indexes, vals, len(cluster.Units))
	// Output:
	// [0 1] [1 2 3 4] 2
}
