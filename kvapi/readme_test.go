package kvapi_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeKVBlocks returns the Go blocks of README's sections from "The KV
// API" to "The streaming loader", in order.
func readmeKVBlocks(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	s := string(b)
	start := strings.Index(s, "\n## The KV API\n")
	end := strings.Index(s, "\n## The streaming loader\n")
	require.True(t, start >= 0 && end > start, "README has the KV API sections")
	var blocks []string
	for rest := s[start:end]; ; {
		i := strings.Index(rest, "\n```go\n")
		if i < 0 {
			return blocks
		}
		rest = rest[i+len("\n```go\n"):]
		j := strings.Index(rest, "\n```\n")
		require.True(t, j >= 0, "a Go block of README ends")
		blocks = append(blocks, rest[:j+1])
		rest = rest[j:]
	}
}

// runReadmeProgram runs src as a main package of this module (laid over
// internal/readmekv with -overlay, so nothing is written into the tree)
// and returns what it printed.
func runReadmeProgram(t *testing.T, src string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs a program; skipped in -short mode")
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	dir := t.TempDir()
	file := filepath.Join(dir, "main.go")
	require.NoError(t, os.WriteFile(file, []byte(src), 0o644))
	ov, err := json.Marshal(map[string]any{"Replace": map[string]string{
		filepath.Join(root, "internal", "readmekv", "main.go"): file,
	}})
	require.NoError(t, err)
	overlay := filepath.Join(dir, "overlay.json")
	require.NoError(t, os.WriteFile(overlay, ov, 0o644))
	cmd := exec.Command("go", "run", "-overlay", overlay, "./internal/readmekv")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s\n--- program:\n%s", out, src)
	return string(out)
}

// TestReadmeKVExample runs README's KV API example as it is written.
func TestReadmeKVExample(t *testing.T) {
	blocks := readmeKVBlocks(t)
	require.Len(t, blocks, 3)
	out := runReadmeProgram(t, blocks[0])
	assert.Equal(t, `1_0 map[global_steps:1 model_version:1 status:running]
1_1 map[global_steps:1 model_version:1 status:running]
1_2 map[global_steps:1 model_version:1 status:running]
2_0 map[global_steps:1 model_version:1 status:running]
[7 8 9]
2
`, out)
}

// TestReadmeTagsExample runs README's status-machine fragment in a
// program that gives it a uid, a finished key in another partition for
// ListWhere("") to find, and an apply that reports the changes: the
// first batch is the key as the fragment left it; apply then finishes
// the prompt, and the next Changes returns at once with it.
func TestReadmeTagsExample(t *testing.T) {
	frag := readmeKVBlocks(t)[1]
	// Report what the calls before the loop returned.
	frag = strings.Replace(frag, "for cursor := []byte(nil); ; {",
		"fmt.Println(\"claimed:\", ok, cur, \"finished:\", len(done[\"old\"]))\nfor cursor := []byte(nil); ; {", 1)
	require.Contains(t, frag, "claimed:")
	src := `package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/kvapi"
)

func main() {
	ctx := context.Background()
	cluster, err := embedded.New(embedded.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	kv := kvapi.New(cluster.Client)
	uid := "uid-1"
	if _, err := kv.Put(ctx, "old", "x", nil, engine.Tags{"status": "finished"}); err != nil {
		log.Fatal(err)
	}
	calls := 0
	apply := func(cs []kvapi.Change) {
		calls++
		for _, c := range cs {
			fmt.Println("change:", c.Key, c.Tags, c.Cleared)
		}
		if calls == 2 {
			cluster.Close()
			os.Exit(0)
		}
		if _, _, err := kv.CompareAndSetTag(ctx, "prompts", uid, "status", "running", "finished"); err != nil {
			log.Fatal(err)
		}
	}
` + frag + "}\n"
	out := runReadmeProgram(t, src)
	assert.Equal(t, `claimed: true running finished: 1
change: uid-1 map[status:running] false
change: uid-1 map[status:finished] false
`, out)
}

// TestReadmeBatchExample runs README's producer/consumer fragment: 256
// prompts put, fetched for "actor", read, and a log-probs column added
// to the same rows, which a second task then fetches with both fields.
func TestReadmeBatchExample(t *testing.T) {
	frag := readmeKVBlocks(t)[2]
	src := `package main

import (
	"context"
	"fmt"
	"log"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/embedded"
	"github.com/tqgo/tq/engine"
)

func main() {
	ctx := context.Background()
	cluster, err := embedded.New(embedded.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	ids := make([]int64, 256)
	lp := make([]float32, 256)
	for i := range ids {
		ids[i], lp[i] = int64(i), float32(i)/2
	}
	p, _ := engine.DenseOf(ids)
	promptBatch := engine.MustBatch(engine.Field{Name: "prompt", Col: p})
	l, _ := engine.DenseOf(lp)
	logProbs := engine.MustBatch(engine.Field{Name: "log_probs", Col: l})
` + frag + `
	fmt.Println("put:", len(meta.Indexes), "fetched:", len(m.Indexes), "read:", data.Rows())
	m2, err := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Task: "critic",
		Fields: []string{"prompt", "log_probs"}, BatchSize: 256})
	if err != nil {
		log.Fatal(err)
	}
	both, err := c.Get(ctx, m2)
	if err != nil {
		log.Fatal(err)
	}
	ps, _ := engine.Values[int64](both.Col("prompt"))
	ls, _ := engine.Values[float32](both.Col("log_probs"))
	ok := len(ps) == 256
	for i := range ps {
		ok = ok && ls[i] == float32(ps[i])/2
	}
	fmt.Println("both fields, row for row:", ok)
	again, _ := c.GetMeta(ctx, client.MetaRequest{Partition: "train", Task: "actor", Fields: []string{"prompt"}, BatchSize: 1})
	fmt.Println("actor has more:", len(again.Indexes))
}
`
	out := runReadmeProgram(t, src)
	assert.Equal(t, "put: 256 fetched: 256 read: 256\nboth fields, row for row: true\nactor has more: 0\n", out)
}
