package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tqgo/tq/wire"
)

// parseArgs parses args with fs, flags before, between and after the
// positional arguments (`tq stat ADDR --json`), and returns those
// arguments. Go's flag package stops at the first one; "--" still ends
// the flags. The usage that -h or --help asks for goes to stdout, and a
// flag given twice is refused (see parseFlags).
func parseArgs(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for all := args; ; {
		if err := parseOnce(fs, args, stdout); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, refuseRepeats(fs, all)
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), refuseRepeats(fs, all)
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// parseFlags is fs.Parse(args), except that the usage -h or --help asks
// for goes to stdout (see flagOutputTo), and that a flag given twice is
// refused (see refuseRepeats). A bad flag's error and the usage after it
// go to fs.Output() as before, which must be where fs.Usage writes.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := parseOnce(fs, args, stdout); err != nil {
		return err
	}
	return refuseRepeats(fs, args)
}

// parseOnce is parseFlags without the check for repeats.
func parseOnce(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	stderr := fs.Output()
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	return flagOutputTo(out.Bytes(), err, stdout, stderr)
}

// flagOutputTo writes out, what parsing a command's flags wrote, and
// returns err, the parse's error: out goes to stdout when err is
// flag.ErrHelp (-h or --help: asking for the usage is no error, and main
// exits 0), else to stderr (a bad flag's error and the usage).
func flagOutputTo(out []byte, err error, stdout, stderr io.Writer) error {
	w := stderr
	if errors.Is(err, flag.ErrHelp) {
		w = stdout
	}
	w.Write(out)
	return err
}

// refuseRepeats returns an error naming a flag of fs that args, already
// parsed by fs, give more than once: the flag package keeps the last
// value and drops the others without a word (two --metadata, and the
// checkpoint keeps only the second; two --controller, and the drain goes
// to the second). A value that looks like a flag (--metadata --x) is a
// value, and nothing after "--" is a flag. The values are not shown: one
// may be a token.
func refuseRepeats(fs *flag.FlagSet, args []string) error {
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if len(a) < 2 || a[0] != '-' {
			continue // an argument: parseArgs reads flags after it too
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		f := fs.Lookup(name)
		if f == nil {
			continue // fs.Parse refused it already (or it is -h)
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && b.IsBoolFlag()) {
			i++ // its value is the next argument
		}
		if seen[f.Name] {
			return fmt.Errorf("%s: --%s is given more than once: give it once (else only the last would count)", fs.Name(), f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

// flagTimeout is context.WithTimeout(ctx, d) for a command's --timeout
// (cmd names the command: "checkpoint save"). explain turns an error that
// the timeout caused, which says only "context deadline exceeded", into
// one that names the flag and its value; other errors it returns as they
// are.
func flagTimeout(ctx context.Context, cmd string, d time.Duration) (_ context.Context, cancel context.CancelFunc, explain func(error) error) {
	cause := fmt.Errorf("%s: gave up after --timeout %v", cmd, d)
	ctx, cancel = context.WithTimeoutCause(ctx, d, cause)
	return ctx, cancel, func(err error) error {
		if err == nil || errors.Is(err, cause) || !errors.Is(err, context.DeadlineExceeded) || context.Cause(ctx) != cause {
			return err
		}
		return fmt.Errorf("%w: %w", cause, err)
	}
}

// checkDialAddr refuses a controller address that no dial could reach,
// before any dial, saying where it came from (from: "--controller",
// "$TQ_CONTROLLER", "address") and what is wanted: an unknown scheme, a
// TCP address with no port, or a port out of range (the dial would say
// "connection refused" for port 0, and "invalid port" for 70000 without
// naming the flag or the variable that held it). A service name as the
// port (host:http) is left to the dial.
func checkDialAddr(cmd, from, addr string) error {
	network, address, err := wire.ParseAddr(addr)
	if err != nil {
		what := "unknown scheme"
		if strings.HasPrefix(addr, "tcp://") || strings.HasPrefix(addr, "unix://") {
			what = "nothing after the scheme"
		}
		return fmt.Errorf("%s: %s %q: %s: want tcp://HOST:PORT or unix:///PATH", cmd, from, addr, what)
	}
	if network != "tcp" {
		return nil
	}
	_, port, err := net.SplitHostPort(address)
	if err != nil || port == "" {
		return fmt.Errorf("%s: %s %q: want tcp://HOST:PORT or unix:///PATH", cmd, from, addr)
	}
	n, err := strconv.ParseUint(port, 10, 64)
	digits := strings.Trim(port, "0123456789") == ""
	if (err == nil && (n == 0 || n > 65535)) || (err != nil && digits) {
		return fmt.Errorf("%s: %s %q: port %q: want a number from 1 to 65535", cmd, from, addr, port)
	}
	return nil
}

// durationValue is the flag.Value of every duration flag of tq's
// commands: time.ParseDuration's syntax, as flag.Duration takes, but a
// value it refuses is named with what is wrong and how to write one (the
// flag package says only "parse error", also for a number given without
// its unit). Define one with durationVar.
type durationValue time.Duration

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Get() any { return time.Duration(*d) }

func (d *durationValue) Set(s string) error {
	v, err := parseDurationFlag(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

// durationVar defines a duration flag of fs stored in p, which starts as
// value. usage names its type, shown in -h, in backquotes (`duration`):
// the flag package names only its own types.
func durationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// durationFlag is durationVar with a new variable, as fs.Duration.
func durationFlag(fs *flag.FlagSet, name string, value time.Duration, usage string) *time.Duration {
	p := new(time.Duration)
	durationVar(fs, p, name, value, usage)
	return p
}

// parseDurationFlag is time.ParseDuration with errors that say what is
// wrong with s and how to write a duration (the flag package puts the
// flag and s before them).
func parseDurationFlag(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, nil
	}
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty: a duration is a number and a unit, like 5s or 500ms")
	}
	if _, nerr := strconv.ParseFloat(t, 64); nerr == nil {
		return 0, errors.New("a duration needs a unit, like 5s or 500ms")
	}
	// The first number's unit: what follows its digits and point.
	num := strings.TrimLeft(t, "+-")
	unit := strings.TrimLeft(num, "0123456789.")
	noNumber := unit == num
	if end := strings.IndexAny(unit, "0123456789."); end >= 0 {
		unit = unit[:end]
	}
	switch {
	case noNumber, slices.Contains([]string{"ns", "us", "µs", "μs", "ms", "s", "m", "h"}, unit):
		// No number first, or a unit time.ParseDuration takes: what is
		// wrong is elsewhere.
		return 0, errors.New("not a duration: want a number and a unit, like 5s, 500ms or 1h30m")
	}
	return 0, fmt.Errorf("unknown unit %q: want ns, us, ms, s, m or h, like 5s or 500ms", unit)
}
