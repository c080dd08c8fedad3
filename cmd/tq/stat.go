package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/transport/tcp"
)

// stat prints a cluster's partitions, rows, production and consumption
// progress per task, and its storage units with their capacity.
func stat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("stat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	token := fs.String("token", "", "the cluster's shared secret (default: $TQ_TOKEN, else the token file in this user's data directory)")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	fs.Usage = func() { fmt.Fprintln(stderr, "usage: tq stat [--token T] ADDR   (tcp://host:port or unix:///path)") }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("stat needs the controller's address")
	}
	addr := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	tok, err := client.FindToken(*token)
	if err != nil {
		return err
	}
	m, err := client.DialMeta(ctx, addr, client.RemoteConfig{Token: tok, Name: "tq-stat"})
	if err != nil {
		return err
	}
	defer m.Close()
	parts, err := m.Partitions(ctx)
	if err != nil {
		return err
	}
	units, err := m.Units(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "controller %s: %d partitions, %d storage units\n", addr, len(parts), len(units))
	if ci, err := m.ClusterInfo(ctx); err == nil {
		state := "in memory only"
		if ci.Durable {
			state = fmt.Sprintf("durable (fsync %s), log %s since the last snapshot", ci.Fsync, bytesString(ci.LogBytes))
		}
		fmt.Fprintf(stdout, "cluster %s, controller start %d, state %s\n", ci.ClusterId, ci.Epoch, state)
	}

	if len(parts) > 0 {
		fmt.Fprintln(stdout, "\nPARTITIONS")
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  partition\trows\treserved\tkeys\tproduced\tfields")
		var taskLines []string
		for _, p := range parts {
			st, err := m.Stats(ctx, p)
			if err != nil {
				continue // cleared meanwhile
			}
			var fields []string
			for _, f := range st.Fields {
				if f.Produced == 0 {
					continue
				}
				d := fmt.Sprintf("%s %v", f.Name, f.DType)
				if f.Shape != nil {
					d += f.Shape.String()
				} else {
					d += " " + f.Kind.String()
				}
				fields = append(fields, d)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\n", p, st.Rows, st.Reserved, st.Keys,
				progress(st.Produced, st.Rows+st.Reserved), strings.Join(fields, ", "))
			for _, t := range st.Tasks {
				taskLines = append(taskLines, fmt.Sprintf("  %s\t%s\t%s", p, t.Task, progress(t.Consumed, st.Rows+st.Reserved)))
			}
		}
		tw.Flush()
		if len(taskLines) > 0 {
			fmt.Fprintln(stdout, "\nCONSUMPTION")
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  partition\ttask\tconsumed")
			for _, l := range taskLines {
				fmt.Fprintln(tw, l)
			}
			tw.Flush()
		}
	}

	fmt.Fprintln(stdout, "\nSTORAGE UNITS")
	if len(units) == 0 {
		fmt.Fprintln(stdout, "  none registered")
		return nil
	}
	freshUnitStats(ctx, units, tok)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  unit\tstate\tused / capacity\tsegments\tpages\thost\taddresses")
	for _, u := range units {
		state := "alive"
		if !u.Alive {
			state = "LOST"
			if !u.LastHeartbeat.IsZero() {
				state += fmt.Sprintf(" (silent %v)", time.Since(u.LastHeartbeat).Round(time.Second))
			}
		}
		pages := bytesString(u.PageSize) + " pre-faulted"
		if u.HugePages {
			pages = bytesString(u.PageSize) + " huge"
		}
		host := u.Host
		if len(host) > 8 {
			host = host[:8]
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s / %s  %s\t%d\t%s\t%s\t%s\n", u.ID, state, bytesString(u.Used), bytesString(u.Capacity),
			percent(u.Used, u.Capacity), u.Segments, pages, host, strings.Join(showAddrs(u.Addrs), " "))
	}
	return tw.Flush()
}

func progress(n, total int) string {
	if total == 0 {
		return "0/0"
	}
	return fmt.Sprintf("%d/%d %s", n, total, percent(int64(n), int64(total)))
}

func percent(n, total int64) string {
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(total))
}

// freshUnitStats asks each live unit for its current numbers (the
// controller only has those of the last heartbeat); units that do not
// answer within a second keep the heartbeat's.
func freshUnitStats(ctx context.Context, units []engine.UnitInfo, token string) {
	tr := tcp.New(tcp.Config{Token: token, Conns: 1, Name: "tq-stat"})
	defer tr.Close()
	var wg sync.WaitGroup
	for i := range units {
		u := &units[i]
		if !u.Alive {
			continue
		}
		peer, _, ok := client.PickAddr(*u, client.HostID())
		if !ok {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := tr.DialConn(ctx, peer)
			if err != nil {
				return
			}
			defer c.Close()
			st, err := c.Stats(ctx)
			if err != nil {
				return
			}
			u.Used, u.Capacity, u.Segments, u.PageSize, u.HugePages = st.Used, st.Capacity, st.Segments, st.PageSize, st.HugePages
		})
	}
	wg.Wait()
}

// showAddrs marks an emulated RDMA device (csrc/emu.c) as such: it moves
// bytes between processes of one host, and is no NIC.
func showAddrs(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a
		if strings.HasPrefix(a, "rdma://emu") {
			out[i] += "(emulated)"
		}
	}
	return out
}
