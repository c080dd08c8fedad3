package auth

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// Environment variables and names in the data directory.
const (
	// EnvDataDir names the data directory, overriding the default.
	EnvDataDir = "TQ_DATA_DIR"
	// EnvToken is a token clients (and tq serve) use before the token
	// file.
	EnvToken = "TQ_TOKEN"
	// EnvRequireServerProof, when true ("1"), makes clients refuse a
	// server that does not prove it knows the token (see
	// [RequireServerProof]).
	EnvRequireServerProof = "TQ_REQUIRE_SERVER_PROOF"
	// TokenFile is the token's file in the data directory.
	TokenFile = "token"
)

// MaxToken bounds a token, however it is given (a token file, $TQ_TOKEN,
// --token, a client's explicit token): servers read a client's token
// before it is authenticated (the RESP endpoint's bound on an argument
// before AUTH is as long as the token), so a token of any length would
// let an unauthenticated peer make them buffer as much.
const MaxToken = 4096

// maxTokenFile bounds what is read of a token file.
const maxTokenFile = MaxToken

// DefaultDataDir returns this user's data directory: $TQ_DATA_DIR when
// set, else $XDG_STATE_HOME/tq when $XDG_STATE_HOME is an absolute path,
// else ~/.local/state/tq (the XDG base directory default). It does not
// create it. It fails only when none of them can be determined ($HOME
// unset).
func DefaultDataDir() (string, error) {
	if d := os.Getenv(EnvDataDir); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "tq"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no data directory: set $%s or --data-dir: %w", EnvDataDir, err)
	}
	return filepath.Join(home, ".local", "state", "tq"), nil
}

// CheckPrivateDir checks that path is a directory (not a symbolic link to
// one) owned by the effective user and writable by nobody else: then no
// other user can remove, replace or add what TQ keeps in it. A missing
// directory is an error wrapping [fs.ErrNotExist]; any other refusal wraps
// [engine.ErrInvalid] and says what is wrong and how to fix it.
func CheckPrivateDir(path string) error {
	fi, err := os.Lstat(lastName(path))
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := filepath.EvalSymlinks(path)
		return fmt.Errorf("%s is a symbolic link (to %q), which whoever owns the directory it sits in can swap: name the directory itself: %w", path, target, engine.ErrInvalid)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (mode %v): %w", path, fi.Mode(), engine.ErrInvalid)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read its owner: %w", path, engine.ErrNotSupported)
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%s is owned by uid %d, not by this user (uid %d), who can change or remove what TQ keeps there: "+
			"choose another directory, or have uid %d remove it: %w", path, st.Uid, euid, st.Uid, engine.ErrInvalid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o (%v%s): other users can remove or replace what TQ keeps there: "+
			"fix with chmod 700 %s, or choose another directory: %w",
			path, modeBits(fi.Mode()), fi.Mode().Perm(), sticky(fi.Mode()), path, engine.ErrInvalid)
	}
	return nil
}

// CheckPeerSocket checks a unix socket path that a peer named (a
// controller's local_addrs, a unit's unix:// and shm:// addresses, a unit's
// fd socket) before a client dials it instead of a TCP address: it must
// exist and sit in a directory [CheckPrivateDir] takes. tq serve puts its
// sockets in such a directory of its user's; a path elsewhere, where
// another user may create what is found there (/tmp/tq-$UID as seen from a
// mount namespace other than the server's — another container on the
// node, a service with its own /tmp — made by someone else), may hold a
// socket of theirs that relays the handshake to the real server over TCP
// and then answers the rest itself. The error says which check failed.
func CheckPeerSocket(path string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	if err := CheckPrivateDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("socket %s: its directory is not this user's alone: %w", path, err)
	}
	return nil
}

// lastName returns path without the trailing slashes and "/." that make
// the kernel follow a symbolic link in the last place ("link/" is the
// directory link leads to): the name that is itself the directory when
// it is not a symbolic link. "/" stays "/".
func lastName(path string) string {
	for {
		t := strings.TrimSuffix(strings.TrimRight(path, "/"), "/.")
		if t == path || t == "" {
			return path
		}
		path = t
	}
}

// modeBits returns the permission bits with the sticky bit, as chmod
// writes them.
func modeBits(m fs.FileMode) uint32 {
	b := uint32(m.Perm())
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

func sticky(m fs.FileMode) string {
	if m&fs.ModeSticky != 0 {
		return ", sticky"
	}
	return ""
}

// EnsurePrivateDir creates path (and missing parents) with mode 0700 if
// it does not exist, then checks it with [CheckPrivateDir]: an existing
// directory is never loosened or tightened, only refused.
func EnsurePrivateDir(path string) error {
	if path == "" {
		return fmt.Errorf("empty directory name: %w", engine.ErrInvalid)
	}
	if err := os.MkdirAll(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return CheckPrivateDir(path)
}

// NewToken returns a fresh token: 32 random bytes, hex-encoded.
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// ReadToken reads a token file, refusing one that is not a regular file
// (a symbolic link included), is not owned by the effective user, or that
// group or other may read or write: such a token protects nothing. A
// missing file is an error wrapping [fs.ErrNotExist]; one that cannot be
// opened or read (EACCES, ENOTDIR) names the path and wraps the cause;
// refusals wrap [engine.ErrInvalid]. Its errors call path the token file
// and advise as for the data directory's, which tq serve makes.
func ReadToken(path string) (string, error) {
	return readToken(path, tokenFileAdvice{
		name:  "token file",
		owner: "remove it, or pass the token explicitly",
		leak:  "remove the file and restart tq serve for a new one",
		empty: "remove it, and tq serve makes a new one",
	})
}

// ReadTokenFile is [ReadToken] for a file of a token other than the
// cluster's, that the user writes (tq serve's --metrics-token-file): the
// same checks, errors that call path what ("--metrics-token-file") and
// advise for a file that nothing remakes.
func ReadTokenFile(path, what string) (string, error) {
	return readToken(path, tokenFileAdvice{
		name:    what,
		symlink: ": name the file itself",
		owner:   "chown it, or name a file of this user's",
		leak:    "choose a new one",
		empty:   "write the token into it",
	})
}

// tokenFileAdvice is what readToken's errors call the file, and how they
// say to fix it.
type tokenFileAdvice struct {
	name    string // what the file is: "token file"
	symlink string // after "is a symbolic link", with its separator
	owner   string // for a file of another user's
	leak    string // for one others may read, after chmod 600
	empty   string // for an empty one
}

func readToken(path string, a tokenFileAdvice) (string, error) {
	// O_NOFOLLOW and fstat: the checks are of the file that is read.
	// O_NONBLOCK: a named pipe in its place would block the open until
	// a writer came; it is refused below instead (reads of a regular
	// file ignore the flag).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return "", fmt.Errorf("%s %s is a symbolic link%s: %w", a.name, path, a.symlink, engine.ErrInvalid)
	}
	if err != nil {
		return "", unreadable(a.name, path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", unreadable(a.name, path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s is not a regular file (mode %v): %w", a.name, path, fi.Mode(), engine.ErrInvalid)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if euid := os.Geteuid(); int(st.Uid) != euid {
			return "", fmt.Errorf("%s %s is owned by uid %d, not by this user (uid %d): %s: %w",
				a.name, path, st.Uid, euid, a.owner, engine.ErrInvalid)
		}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s %s has mode %04o (%v): other users can read the token: fix with chmod 600 %s "+
			"(and consider the token leaked: %s): %w",
			a.name, path, uint32(perm), perm, path, a.leak, engine.ErrInvalid)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", unreadable(a.name, path, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("%s %s is larger than %d bytes: %w", a.name, path, maxTokenFile, engine.ErrInvalid)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s %s is empty: %s: %w", a.name, path, a.empty, engine.ErrInvalid)
	}
	if strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", fmt.Errorf("%s %s holds more than one word: %w", a.name, path, engine.ErrInvalid)
	}
	return tok, nil
}

// unreadable is readToken's error for a file it could not open or read:
// the path once (not again in an [fs.PathError]'s words) and the cause,
// which it wraps.
func unreadable(name, path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s %s cannot be read: %w", name, path, err)
}

// LoadOrCreateToken returns the token in dataDir's token file, creating
// the directory (0700) and the file on first use: 32 random bytes in hex,
// mode 0600, written to a temporary file and renamed into place only if
// no token file exists by then, so that servers starting together agree
// on one token. The directory must pass [EnsurePrivateDir] and the file
// [ReadToken].
func LoadOrCreateToken(dataDir string) (string, error) {
	if err := EnsurePrivateDir(dataDir); err != nil {
		return "", fmt.Errorf("data directory: %w", err)
	}
	path := filepath.Join(dataDir, TokenFile)
	tok, err := ReadToken(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return tok, err
	}
	if tok, err = NewToken(); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dataDir, ".token-*") // mode 0600
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // once renamed, this removes nothing
	_, err = f.WriteString(tok + "\n")
	err = errors.Join(err, f.Sync(), f.Close())
	if err != nil {
		return "", fmt.Errorf("write token file: %w", err)
	}
	switch err := renameNoReplace(tmp, path); {
	case errors.Is(err, fs.ErrExist):
		// Another process made one first: use it.
		return ReadToken(path)
	case err != nil:
		return "", fmt.Errorf("write token file: %w", err)
	}
	if d, err := os.Open(dataDir); err == nil {
		d.Sync() // make the rename durable; a failure here loses nothing yet
		d.Close()
	}
	return tok, nil
}

// renameNoReplace renames oldpath to newpath unless newpath exists
// (then the error wraps [fs.ErrExist]). File systems without
// RENAME_NOREPLACE get a hard link, which refuses the same way.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ENOTSUP):
		return os.Link(oldpath, newpath)
	}
	return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
}

// CheckToken refuses a token given by hand (an explicit token, $TQ_TOKEN,
// tq serve's --token) that is not one word: white space around it (a
// trailing newline, from a file read whole into a variable or a
// Kubernetes Secret made from one) or inside it, or a control character
// — the rule [ReadToken] applies to a token file after trimming it — or
// that is longer than [MaxToken], as a token file may not be. Such
// a token is refused rather than trimmed, by tq serve and by clients
// alike, so that the two never disagree on it. The error names the
// token's length and the fault, never the token, nor where it came from
// (the caller adds that).
func CheckToken(tok string) error {
	bad := func(r rune) bool { return r <= ' ' || r == 0x7f }
	if len(tok) > MaxToken {
		return fmt.Errorf("the token is %d bytes, longer than the %d a token may have (as a token file)", len(tok), MaxToken)
	}
	switch trimmed := strings.TrimSpace(tok); {
	case trimmed != tok && !strings.ContainsFunc(trimmed, bad):
		return fmt.Errorf("white space around the token (%d bytes; a trailing newline, as from a file?): strip it where the token is set", len(tok))
	case strings.ContainsFunc(tok, bad):
		return fmt.Errorf("white space or a control character inside the token (%d bytes): a token is one word, as tq serve's token file holds", len(tok))
	}
	return nil
}

// EmptyEnvToken is the refusal of $TQ_TOKEN set but empty (a Kubernetes
// Secret with an empty value), by tq serve and by [FindToken] alike:
// taken as unset, a client used the token file — some other token, or
// none — and tq serve of a unit looked for a file it cannot have.
const EmptyEnvToken = "$" + EnvToken + " is set but empty (a Secret with an empty value?): set it to the cluster's token, or unset it to use the data directory's token file"

// FindToken returns the token a client presents: explicit when it is not
// empty, else $TQ_TOKEN, else (when $TQ_TOKEN is unset) the token file in
// [DefaultDataDir] — the one tq serve of the same user made. With none of
// them it returns "" (a server run with --insecure needs none): only a
// token file that is not there ([fs.ErrNotExist], or ENOTDIR: its path
// goes through something that is not a directory) counts as none. One
// that may be there but cannot be read (its directory closed to this
// user; the file another user's) is an error naming
// the path and the cause, which it wraps: taken as none, the client sent
// no token and the server's refusal pointed nowhere near the file. A token
// file that exists but is not safe to use ([ReadToken]), an explicit token
// or $TQ_TOKEN that [CheckToken] refuses, or $TQ_TOKEN set but empty
// ([EmptyEnvToken], as tq serve refuses it) is an error wrapping
// [engine.ErrInvalid] that names where the token came from and never the
// token.
func FindToken(explicit string) (string, error) {
	if explicit != "" {
		if err := CheckToken(explicit); err != nil {
			return "", fmt.Errorf("the token given explicitly: %w: %w", err, engine.ErrInvalid)
		}
		return explicit, nil
	}
	if t, set := os.LookupEnv(EnvToken); t != "" {
		if err := CheckToken(t); err != nil {
			return "", fmt.Errorf("$%s: %w: %w", EnvToken, err, engine.ErrInvalid)
		}
		return t, nil
	} else if set {
		return "", fmt.Errorf("%s: %w", EmptyEnvToken, engine.ErrInvalid)
	}
	dir, err := DefaultDataDir()
	if err != nil {
		return "", nil
	}
	tok, err := ReadToken(filepath.Join(dir, TokenFile))
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		// ENOTDIR: a component of the path is not a directory, so no
		// file can be there ($TQ_DATA_DIR pointing into /dev/null, as
		// tests do to say "no data directory").
		return "", nil
	case err != nil && !errors.Is(err, engine.ErrInvalid):
		return "", fmt.Errorf("%w: pass the token, set $%s, or set $%s to a directory of this user's "+
			"(one without a token file, for a server run with --insecure): %w", err, EnvToken, EnvDataDir, engine.ErrInvalid)
	}
	return tok, err
}

// RequireServerProof returns whether a client requires the server to
// prove, in the handshake, that it knows the token (wire.ConnConfig's
// RequireServerProof): explicit, else $TQ_REQUIRE_SERVER_PROOF read as a
// boolean ("1", "true"; "0", "false" or unset: no). Another value is an
// error wrapping [engine.ErrInvalid]. It is read where [FindToken] is,
// so that every client of this user can be made to insist without code
// changes; it is off by default because a token found by itself (a
// leftover token file, an inherited $TQ_TOKEN) would otherwise make the
// client refuse every server run with --insecure.
func RequireServerProof(explicit bool) (bool, error) {
	if explicit {
		return true, nil
	}
	v := strings.TrimSpace(os.Getenv(EnvRequireServerProof))
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("$%s=%q: want 1 or 0: %w", EnvRequireServerProof, v, engine.ErrInvalid)
	}
	return b, nil
}

// TokenHint says where a client looks for a token, for an error message
// after a server refused one.
func TokenHint() string {
	where := "$" + EnvDataDir + "/" + TokenFile
	if dir, err := DefaultDataDir(); err == nil {
		where = filepath.Join(dir, TokenFile)
	}
	return fmt.Sprintf("a client presents the token it is given, else $%s, else the token file %s that tq serve of the same user writes", EnvToken, where)
}
