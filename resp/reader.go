package resp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Limits on what one request may claim. Redis's own are 512 MiB per bulk
// string (proto-max-bulk-len) and 1M arguments per command; the inline
// limit is Redis's 64 KiB.
const (
	DefaultMaxValue = 512 << 20
	MaxArgs         = 1 << 20
	maxInline       = 64 << 10
	// Before AUTH a command is small: HELLO 3 AUTH user pass SETNAME name
	// is seven arguments.
	maxUnauthArgs = 8
	maxUnauthBulk = 4 << 10
	// An inline command before AUTH may be this much longer than an
	// argument: room for the words around a token as long as the bound
	// ("HELLO 3 AUTH default ", quotes).
	unauthInlineRoom = 32
	// Arguments up to this size are read into a buffer the connection
	// reuses (its arena); larger ones get their own allocation, counted
	// against the server's budget for large values in flight.
	smallArg = 64 << 10
	// An arena larger than this (a command of many small arguments) is
	// counted against that budget too, and dropped after its command.
	arenaFree = 1 << 20
	// So are the slices of a command of more arguments than this (24
	// bytes each, an empty argument included).
	argsFree = 4096
	// Arguments of this size or more are read into memory mapped for
	// the command and unmapped after it, so that a large value's memory
	// is given back to the system at once rather than when the garbage
	// collector gets to it.
	mappedArg = 1 << 20
)

// errProtocol is a malformed request: the server answers it with an error
// that names what was wrong, then closes the connection, as Redis does
// (nothing after it can be framed).
type errProtocol struct{ msg string }

func (e *errProtocol) Error() string { return "Protocol error: " + e.msg }

func protoErr(format string, args ...any) error {
	return &errProtocol{fmt.Sprintf(format, args...)}
}

// reader reads commands from a client: RESP arrays of bulk strings, or
// inline commands (a line of words, as a person types in telnet). It
// checks every length before it allocates for it.
type reader struct {
	br       *bufio.Reader
	src      gate // what br reads: the client, shut while lineEnd looks
	args     [][]byte
	arena    []byte // backs the small arguments of the last command
	maxValue int64
	authed   bool
	// unauthBulk bounds an argument before AUTH: maxUnauthBulk, or the
	// token's length where that is longer (a token is at most
	// auth.MaxToken, as NewServer checks), so that the token can be sent.
	unauthBulk int
	// large is called before an argument larger than smallArg is read
	// with its size; it returns an error to refuse it (the budget for
	// large values is spent). Its bytes are given back by the server
	// when the command is done.
	large func(n int64) error
	// mapped are the arguments of the last command read into their own
	// mappings; done unmaps them.
	mapped [][]byte
	// mid is true while a command is being read, from its first byte:
	// the server bounds how long the rest may take. begun counts the
	// commands begun, so that the server tells one command from the
	// next.
	mid   bool
	begun uint64
}

func newReader(r io.Reader, maxValue int64) *reader {
	rd := &reader{src: gate{r: r}, maxValue: maxValue, unauthBulk: maxUnauthBulk}
	rd.br = bufio.NewReaderSize(&rd.src, 16<<10)
	return rd
}

// next reads one command. Its arguments are valid until the next call.
// An io.EOF before the first byte is a clean end; a command cut short is
// io.ErrUnexpectedEOF.
func (r *reader) next() ([][]byte, error) {
	r.args = r.args[:0]
	r.arena = r.arena[:0]
	c, err := r.br.ReadByte()
	if err != nil {
		return nil, err
	}
	r.mid = true
	r.begun++
	defer func() { r.mid = false }()
	if c != '*' {
		r.br.UnreadByte()
		return r.inline()
	}
	n, err := r.length("multibulk")
	if err != nil {
		return nil, err
	}
	switch max := r.argLimit(); {
	case n < 0:
		// "*-1" is a null array: Redis skips it.
		return r.args, nil
	case n > int64(max):
		return nil, protoErr("command of %d arguments exceeds the limit of %d%s", n, max, r.authHint())
	}
	for range n {
		c, err := r.br.ReadByte()
		if err != nil {
			return nil, unexpected(err)
		}
		if c != '$' {
			return nil, protoErr("expected '$' before an argument, got %q", c)
		}
		size, err := r.length("bulk")
		if err != nil {
			return nil, err
		}
		if err := r.checkBulk(size); err != nil {
			return nil, err
		}
		arg, err := r.bulk(int(size))
		if err != nil {
			return nil, err
		}
		if len(r.args) == cap(r.args) {
			if err := r.growArgs(); err != nil {
				return nil, err
			}
		}
		r.args = append(r.args, arg)
	}
	return r.args, nil
}

// growArgs doubles r.args's room, charging a slice of more than
// argsFree arguments to the budget for large values as an arena is.
func (r *reader) growArgs() error {
	n := max(2*cap(r.args), 16)
	if n > argsFree && r.large != nil {
		if err := r.large(int64(n) * int64(unsafe.Sizeof([]byte(nil)))); err != nil {
			return err
		}
	}
	args := make([][]byte, len(r.args), n)
	copy(args, r.args)
	r.args = args
	return nil
}

func (r *reader) argLimit() int {
	if r.authed {
		return MaxArgs
	}
	return maxUnauthArgs
}

func (r *reader) authHint() string {
	if r.authed {
		return ""
	}
	return " before AUTH"
}

func (r *reader) checkBulk(size int64) error {
	limit := r.maxValue
	if !r.authed {
		limit = int64(r.unauthBulk)
	}
	if size > limit {
		return protoErr("argument of %d bytes exceeds the limit of %d%s", size, limit, r.authHint())
	}
	return nil
}

// bulk reads an argument of size bytes and its CRLF.
func (r *reader) bulk(size int) ([]byte, error) {
	var arg []byte
	if size <= smallArg {
		at := len(r.arena)
		if cap(r.arena)-at < size {
			// A new arena: arguments already read keep the old one.
			n := max(2*cap(r.arena), size, 4096)
			if n > arenaFree && r.large != nil {
				if err := r.large(int64(n)); err != nil {
					return nil, err
				}
			}
			r.arena = make([]byte, 0, n)
			at = 0
		}
		r.arena = r.arena[:at+size]
		arg = r.arena[at : at+size : at+size]
	} else {
		if r.large != nil {
			if err := r.large(int64(size)); err != nil {
				return nil, err
			}
		}
		if size >= mappedArg {
			m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				return nil, fmt.Errorf("map %d bytes for an argument: %w", size, err)
			}
			r.mapped = append(r.mapped, m)
			arg = m
		} else {
			arg = make([]byte, size)
		}
	}
	if _, err := io.ReadFull(r.br, arg); err != nil {
		return nil, unexpected(err)
	}
	if err := r.crlf(); err != nil {
		return nil, err
	}
	return arg, nil
}

func (r *reader) crlf() error {
	c1, err := r.br.ReadByte()
	if err != nil {
		return unexpected(err)
	}
	c2, err := r.br.ReadByte()
	if err != nil {
		return unexpected(err)
	}
	if c1 != '\r' || c2 != '\n' {
		return protoErr("argument not followed by CRLF")
	}
	return nil
}

// length reads a length line ("multibulk", a count, or "bulk", a size)
// and its CRLF as Redis reads one (string2ll): "0", or digits without a
// leading zero, within int64; no '+', no spaces. A count may be negative
// (a null array); a size may not. The line must end in CRLF: Redis looks
// for the CR, so it never takes a bare LF there ("*1\n$4\r\n" is the
// length "1\n$4" to it) and refuses the line with the same error.
func (r *reader) length(what string) (int64, error) {
	line, crlf, err := r.lineEnd(32)
	if err != nil {
		return 0, err
	}
	if !crlf {
		return 0, protoErr("invalid %s length %q (it ends in a bare LF, not CRLF)", what, line)
	}
	n, ok := redisInt(line)
	if !ok || n < 0 && what == "bulk" {
		return 0, protoErr("invalid %s length %q", what, line)
	}
	return n, nil
}

// line reads up to CRLF (or a bare LF, which an inline command may end
// in, as in Redis), at most limit bytes before it.
func (r *reader) line(limit int) ([]byte, error) {
	line, _, err := r.lineEnd(limit)
	return line, err
}

// lineEnd is line, and whether the line ended in CRLF rather than a bare
// LF.
func (r *reader) lineEnd(limit int) (line []byte, crlf bool, err error) {
	var out []byte
	for {
		// What has arrived is looked at before waiting for more, so a
		// line past the limit with no LF yet is refused at once, as
		// Redis refuses it, not once the buffer fills or the command
		// times out. The gate shut, ReadSlice cannot wait: it takes a
		// line whose LF is buffered (most, at the cost the reader had
		// before), or hands back what is buffered without one; only
		// a line within its limit then waits for more.
		r.src.shut = true
		frag, err := r.br.ReadSlice('\n')
		r.src.shut = false
		if err == nil {
			if len(out)+len(frag) > limit+2 {
				return nil, false, protoErr("line longer than %d bytes", limit)
			}
			if out == nil {
				out = frag
			} else {
				out = append(out, frag...)
			}
			break
		}
		if len(frag) > 0 {
			// Past the limit only a CR, before the LF to come, may wait.
			if n := len(out) + len(frag); n > limit+1 || n == limit+1 && frag[len(frag)-1] != '\r' {
				return nil, false, protoErr("line longer than %d bytes", limit)
			}
			out = append(out, frag...)
		}
		switch {
		case err == errGateShut:
			if _, err := r.br.Peek(1); err != nil {
				return nil, false, unexpected(err)
			}
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, false, unexpected(err)
		}
	}
	out = out[:len(out)-1]
	if len(out) > 0 && out[len(out)-1] == '\r' {
		return out[:len(out)-1], true, nil
	}
	// The limit is on what is before the LF, as where the LF has yet to
	// come.
	if len(out) > limit {
		return nil, false, protoErr("line longer than %d bytes", limit)
	}
	return out, false, nil
}

// gate is the source a reader's buffer reads: while shut, a read returns
// errGateShut rather than wait for the client.
type gate struct {
	r    io.Reader
	shut bool
}

var errGateShut = errors.New("resp: a read would wait for the client")

func (g *gate) Read(p []byte) (int, error) {
	if g.shut {
		return 0, errGateShut
	}
	return g.r.Read(p)
}

// inline reads a command typed as a line, split into words as Redis
// splits one (see splitInline).
func (r *reader) inline() ([][]byte, error) {
	limit := maxInline
	if !r.authed {
		limit = r.unauthBulk + unauthInlineRoom
	}
	line, err := r.line(limit)
	if err != nil {
		return nil, err
	}
	args, err := splitInline(line)
	if err != nil {
		return nil, err
	}
	if len(args) > r.argLimit() {
		return nil, protoErr("command of %d arguments exceeds the limit of %d%s", len(args), r.argLimit(), r.authHint())
	}
	r.args = append(r.args, args...)
	return r.args, nil
}

// splitInline splits an inline command's line into words by Redis's
// rules (sdssplitargs): blanks between words; a double-quoted section
// takes \n \r \t \b \a, \xHH and \ before any other character as that
// character; a single-quoted one takes \' as a quote and everything else
// as it is; a quote may open a section in the middle of a word, and a
// closing quote must end the word.
func splitInline(line []byte) ([][]byte, error) {
	unbalanced := protoErr("unbalanced quotes in request")
	var args [][]byte
	for p := 0; ; {
		for p < len(line) && isSpace(line[p]) {
			p++
		}
		if p == len(line) {
			return args, nil
		}
		word := []byte{}
		for inq, insq, done := false, false, false; !done; p++ {
			switch {
			case inq:
				switch {
				case p == len(line):
					return nil, unbalanced
				case line[p] == '\\' && p+3 < len(line) && line[p+1] == 'x' && isHex(line[p+2]) && isHex(line[p+3]):
					word = append(word, unhex(line[p+2])<<4|unhex(line[p+3]))
					p += 3
				case line[p] == '\\' && p+1 < len(line):
					p++
					word = append(word, unescape(line[p]))
				case line[p] == '"':
					if p+1 < len(line) && !isSpace(line[p+1]) {
						return nil, unbalanced // a closing quote must end the word
					}
					done = true
				default:
					word = append(word, line[p])
				}
			case insq:
				switch {
				case p == len(line):
					return nil, unbalanced
				case line[p] == '\\' && p+1 < len(line) && line[p+1] == '\'':
					p++
					word = append(word, '\'')
				case line[p] == '\'':
					if p+1 < len(line) && !isSpace(line[p+1]) {
						return nil, unbalanced
					}
					done = true
				default:
					word = append(word, line[p])
				}
			case p == len(line):
				done = true
				p-- // the loop's p++ must not pass the end
			default:
				switch c := line[p]; c {
				case ' ', '\n', '\r', '\t':
					done = true
				case '"':
					inq = true
				case '\'':
					insq = true
				default:
					word = append(word, c)
				}
			}
		}
		args = append(args, word)
	}
}

// isSpace is C's isspace, which Redis skips blanks between words with.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// unescape is the character a backslash before c in double quotes stands
// for.
func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}

// done ends the last command: its mapped arguments are unmapped, and a
// large arena dropped, so nothing may refer to them any more.
func (r *reader) done() {
	for _, m := range r.mapped {
		unix.Munmap(m)
	}
	r.mapped = r.mapped[:0]
	// What a command of many arguments needed is not kept for the
	// connection's life (nor its budget held).
	if cap(r.arena) > arenaFree {
		r.arena = nil
	}
	if cap(r.args) > argsFree {
		r.args = nil
	}
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
