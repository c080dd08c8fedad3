package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
)

// parseArgs parses args with fs, flags before, between and after the
// positional arguments (`tq stat ADDR --json`), and returns those
// arguments. Go's flag package stops at the first one; "--" still ends
// the flags. The usage that -h or --help asks for goes to stdout (see
// parseFlags).
func parseArgs(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, stdout); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// parseFlags is fs.Parse(args), except that the usage -h or --help asks
// for goes to stdout (see flagOutputTo). A bad flag's error and the usage
// after it go to fs.Output() as before, which must be where fs.Usage
// writes.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
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
