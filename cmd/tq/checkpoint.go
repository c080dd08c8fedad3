package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/wire/wirepb"
)

const checkpointUsage = `usage:
  tq checkpoint save ADDR NAME [--metadata JSON]
                                 save the cluster's metadata and every cell's bytes as NAME,
                                 with a JSON object of your own kept beside them; a
                                 checkpoint NAME saved before is replaced (and named)
  tq checkpoint load ADDR NAME   replace the cluster's state with checkpoint NAME
  tq checkpoint list ADDR        list the saved checkpoints (with their JSON objects); one
                                 a load refuses (another build wrote it, or its state file
                                 is damaged) is marked (unusable), with why below the table

ADDR is the controller's (tcp://host:port or unix:///path). Checkpoints live
under the controller's data directory (DATA_DIR/checkpoints/NAME); a name is
1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-' (save
and load check it before they dial). A load into a fresh cluster serves the
saved bytes; the cells the state held before are freed.
`

// checkpointCmd runs `tq checkpoint`.
func checkpointCmd(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("checkpoint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	token := fs.String("token", "", "the cluster's shared secret (default: $TQ_TOKEN, else the token file in this user's data directory). Prefer $TQ_TOKEN: other users of this host see a command line (ps).")
	timeout := durationFlag(fs, "timeout", 10*time.Minute, "give up after this `duration`")
	metadata := fs.String("metadata", "", "with save: a JSON object (at most 64 KiB) kept with the checkpoint, such as the training step it belongs to; list and load show it")
	fs.Usage = func() { fmt.Fprint(fs.Output(), checkpointUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	if *timeout <= 0 {
		return fmt.Errorf("checkpoint: --timeout %v: must be positive", *timeout)
	}
	verb, rest, err := checkpointArgs(pos)
	if err != nil {
		fs.Usage()
		return err
	}
	if *metadata != "" && verb != "save" {
		return fmt.Errorf("checkpoint %s: --metadata is for save; %s does not use it", verb, verb)
	}
	if err := checkDialAddr("checkpoint "+verb, "address", rest[0]); err != nil {
		return err
	}
	if verb != "list" {
		// Checked here, as the controller would, so that a bad name is
		// named whatever the controller's state (down: "connection refused").
		if err := controller.CheckCheckpointName(rest[1]); err != nil {
			return fmt.Errorf("checkpoint %s: %w", verb, err)
		}
	}
	ctx, cancel, explain := flagTimeout(ctx, "checkpoint "+verb, *timeout)
	defer cancel()
	defer func() { err = explain(err) }()
	m, err := client.DialMeta(ctx, rest[0], client.RemoteConfig{Token: *token, Name: "tq-checkpoint"})
	if err != nil {
		return err
	}
	defer m.Close()
	switch verb {
	case "save":
		old := existingCheckpoint(ctx, m, rest[1])
		start := time.Now()
		info, err := m.SaveCheckpoint(ctx, rest[1], []byte(*metadata))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "tq checkpoint: saved %s in %v: %d cells, %s%s\n", rest[1], time.Since(start).Round(time.Millisecond),
			info.Cells, bytesString(info.Bytes), lostString(info.LostCells))
		if old != nil {
			fmt.Fprintf(stdout, "tq checkpoint: replaced the earlier checkpoint %s (%s)\n", printable(old.Name), describeCheckpoint(old))
		}
	case "load":
		start := time.Now()
		info, err := m.LoadCheckpoint(ctx, rest[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "tq checkpoint: loaded %s in %v: %d cells, %s%s\n", rest[1], time.Since(start).Round(time.Millisecond),
			info.Cells, bytesString(info.Bytes), lostString(info.LostCells))
		if len(info.Metadata) > 0 {
			fmt.Fprintf(stdout, "tq checkpoint: its metadata: %s\n", compactJSON(info.Metadata))
		}
	case "list":
		list, err := m.Checkpoints(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSAVED\tCELLS\tLOST\tBYTES\tMETADATA")
		var unusable []string
		for _, c := range list {
			name := printable(c.Name)
			if c.Unusable != "" {
				// Another build's, or a damaged one: listed, so that it
				// is not taken for missing, but never as one a load takes.
				unusable = append(unusable, fmt.Sprintf("tq checkpoint: %s cannot be loaded: %s", name, printable(c.Unusable)))
				name += " (unusable)"
			}
			saved := "-" // a damaged state file says nothing
			if c.SavedUnixMs != 0 {
				saved = time.UnixMilli(c.SavedUnixMs).Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", name, saved, c.Cells, c.LostCells, bytesString(c.Bytes), compactJSON(c.Metadata))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, line := range unusable {
			fmt.Fprintln(stdout, line)
		}
	}
	return nil
}

// existingCheckpoint is the checkpoint a save of name would replace, as
// a listing before the save finds it (nil: none, or the listing failed).
// The controller replaces it by design (the swap is atomic), and its
// reply says nothing of it: this is so that tq checkpoint save can say
// so. The listing reads each checkpoint's state header, a small read
// beside the save's copy of every cell; a save racing this one under the
// same name goes unmentioned.
func existingCheckpoint(ctx context.Context, m *client.RemoteMeta, name string) *wirepb.CheckpointInfo {
	list, err := m.Checkpoints(ctx)
	if err != nil {
		return nil // the save says what is wrong, if anything is
	}
	for _, c := range list {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// describeCheckpoint says what a replaced checkpoint held: when it was
// saved, its cells and bytes, and its metadata; or why a load refused it.
func describeCheckpoint(c *wirepb.CheckpointInfo) string {
	if c.Unusable != "" {
		return "unusable: " + printable(c.Unusable)
	}
	d := fmt.Sprintf("saved %s, %d cells, %s", time.UnixMilli(c.SavedUnixMs).Format(time.RFC3339), c.Cells, bytesString(c.Bytes))
	if c.LostCells > 0 {
		d += fmt.Sprintf(", %d lost", c.LostCells)
	}
	if len(c.Metadata) > 0 {
		d += ", metadata " + compactJSON(c.Metadata)
	}
	return d
}

// checkpointArgs splits tq checkpoint's positional arguments into the
// verb and its ADDR (and NAME), or says what is wrong with them: the verb
// it does not know, the argument missing, or those left over.
func checkpointArgs(pos []string) (verb string, rest []string, err error) {
	const all = "want save ADDR NAME, load ADDR NAME or list ADDR"
	if len(pos) == 0 {
		return "", nil, errors.New("checkpoint: no verb given: " + all)
	}
	verb, rest = pos[0], pos[1:]
	var names []string
	switch verb {
	case "save", "load":
		names = []string{"ADDR", "NAME"}
	case "list":
		names = []string{"ADDR"}
	default:
		return "", nil, fmt.Errorf("checkpoint: unknown verb %q: %s", verb, all)
	}
	want := fmt.Sprintf("want %s %s", verb, strings.Join(names, " "))
	if len(rest) < len(names) {
		return "", nil, fmt.Errorf("checkpoint %s: missing %s: %s", verb, strings.Join(names[len(rest):], " and "), want)
	}
	if len(rest) > len(names) {
		extra := make([]string, 0, len(rest)-len(names))
		for _, a := range rest[len(names):] {
			extra = append(extra, strconv.Quote(a))
		}
		return "", nil, fmt.Errorf("checkpoint %s: unexpected %s: %s", verb, strings.Join(extra, " "), want)
	}
	return verb, rest, nil
}

// compactJSON is a checkpoint's metadata on one line.
func compactJSON(b []byte) string {
	var out bytes.Buffer
	if json.Compact(&out, b) != nil {
		return printable(string(b))
	}
	return printable(out.String())
}

// lostString says how many cells a checkpoint holds without their bytes
// ("" for none): their storage unit was gone when it was saved, and a
// read of them after a load fails as lost.
func lostString(n int64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("; %d cells lost when it was saved (their unit was gone): reads of them fail", n)
}
