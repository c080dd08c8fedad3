// Command tq runs TQ: `tq demo` runs the KV example on an embedded
// cluster (controller and two storage units in this process).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/tqgo/tq/bench"
)

const usage = `tq — a streaming data store and transfer engine for RL post-training

Usage:
  tq serve [flags]   run a controller and storage units (or one role) until SIGTERM
  tq stat ADDR       show a cluster's partitions, task progress and storage units
  tq checkpoint save|load|list ADDR [NAME]
                     save or load the cluster's state and data by name, or list them
  tq unit drain|undrain|rebalance --controller ADDR [ID]
                     take a storage unit out of service, moving its cells to others;
                     or move cells from fuller units to emptier ones
  tq demo [flags]    run the KV example on an embedded cluster
  tq bench [flags]   measure put and get between two processes against baselines
  tq help            show this help

Run "tq <command> -h" for a command's flags.
`

func main() {
	bench.ChildMain() // `tq bench` runs its writer and reader as this binary
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal asks for a graceful end (tq serve lets requests
	// finish for up to --shutdown-timeout); from then on the signals are
	// the system's again, so a second one ends the process at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return // -h or --help: the usage is on stdout, and asking is no error
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tq:", terminalSafe(err.Error()))
		code := 2
		if es := (exitStatus{}); errors.As(err, &es) {
			code = es.code
		}
		os.Exit(code)
	}
}

// exitStatus is an error that ends tq with a status other than 2: `tq
// serve` exits 1 when its shutdown ran to its end but some of it failed.
type exitStatus struct {
	code int
	err  error
}

func (e exitStatus) Error() string { return e.err.Error() }
func (e exitStatus) Unwrap() error { return e.err }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "demo":
		return demo(ctx, args[1:], stdout, stderr)
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "stat":
		return stat(ctx, args[1:], stdout, stderr)
	case "checkpoint":
		return checkpointCmd(ctx, args[1:], stdout, stderr)
	case "unit":
		return unitCmd(ctx, args[1:], stdout, stderr)
	case "bench":
		return benchCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// terminalSafe is s with every character a terminal could take for a
// command (escape sequences, carriage returns) or cannot show (invalid
// UTF-8) written as a Go escape; line breaks and tabs stay. An error can
// carry names a peer chose (a partition, a key), and an operator reads
// it on a terminal.
func terminalSafe(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\t' || strconv.IsPrint(r):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}
