package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
)

// nobody is a uid that is not this process's, for ownership tests (they
// need root to chown).
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
}

func TestDefaultDataDir(t *testing.T) {
	for _, tc := range []struct {
		name               string
		dataDir, xdg, home string
		want               string
	}{
		{"TQ_DATA_DIR wins", "/srv/tq", "/xdg", "/home/u", "/srv/tq"},
		{"XDG_STATE_HOME", "", "/xdg", "/home/u", "/xdg/tq"},
		{"relative XDG_STATE_HOME is ignored", "", "rel", "/home/u", "/home/u/.local/state/tq"},
		{"home", "", "", "/home/u", "/home/u/.local/state/tq"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvDataDir, tc.dataDir)
			t.Setenv("XDG_STATE_HOME", tc.xdg)
			t.Setenv("HOME", tc.home)
			got, err := DefaultDataDir()
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	t.Run("no home", func(t *testing.T) {
		t.Setenv(EnvDataDir, "")
		t.Setenv("XDG_STATE_HOME", "")
		t.Setenv("HOME", "")
		_, err := DefaultDataDir()
		require.Error(t, err)
		assert.Contains(t, err.Error(), EnvDataDir)
	})
}

func TestCheckPrivateDir(t *testing.T) {
	for _, tc := range []struct {
		name  string
		make  func(t *testing.T, path string)
		want  error  // nil: accepted
		words string // in the message when refused
	}{
		{"0700", mkdir(0o700), nil, ""},
		{"0755", mkdir(0o755), nil, ""},
		{"0750", mkdir(0o750), nil, ""},
		{"world-writable 0777", mkdir(0o777), engine.ErrInvalid, "mode 0777"},
		{"sticky 1777 like /tmp", mkdir(0o777 | fs.ModeSticky), engine.ErrInvalid, "mode 1777"},
		{"group-writable 0770", mkdir(0o770), engine.ErrInvalid, "chmod 700"},
		{"a file", func(t *testing.T, p string) { require.NoError(t, os.WriteFile(p, nil, 0o600)) }, engine.ErrInvalid, "not a directory"},
		{"a symlink", func(t *testing.T, p string) { require.NoError(t, os.Symlink(t.TempDir(), p)) }, engine.ErrInvalid, "symbolic link"},
		{"missing", func(*testing.T, string) {}, fs.ErrNotExist, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "d")
			tc.make(t, path)
			err := CheckPrivateDir(path)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), path)
			assert.Contains(t, err.Error(), tc.words)
		})
	}
	t.Run("another owner", func(t *testing.T) {
		needRoot(t)
		path := filepath.Join(t.TempDir(), "d")
		mkdir(0o700)(t, path)
		require.NoError(t, os.Chown(path, nobody, nobody))
		err := CheckPrivateDir(path)
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "owned by uid 65534")
	})
}

func mkdir(mode fs.FileMode) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		require.NoError(t, os.Mkdir(path, 0o700))
		require.NoError(t, os.Chmod(path, mode)) // past the umask
	}
}

func TestEnsurePrivateDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b")
	require.NoError(t, EnsurePrivateDir(path))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), fi.Mode().Perm())
	require.NoError(t, EnsurePrivateDir(path), "a second time")

	open := filepath.Join(t.TempDir(), "open")
	mkdir(0o777)(t, open)
	require.ErrorIs(t, EnsurePrivateDir(open), engine.ErrInvalid)
	fi, err = os.Stat(open)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o777), fi.Mode().Perm(), "a refused directory is left as it was")
}

func TestLoadOrCreateToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "tq")
	tok, err := LoadOrCreateToken(dir)
	require.NoError(t, err)
	assert.Len(t, tok, 64)
	assert.NotContains(t, tok, " ")
	fi, err := os.Stat(filepath.Join(dir, TokenFile))
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o600), fi.Mode().Perm())
	di, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), di.Mode().Perm())

	again, err := LoadOrCreateToken(dir)
	require.NoError(t, err)
	assert.Equal(t, tok, again, "a second start reads the same token")
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, left, 1, "no temporary file left behind: %v", left)

	other, err := LoadOrCreateToken(t.TempDir())
	require.NoError(t, err)
	assert.NotEqual(t, tok, other, "two data directories, two tokens")
}

// Servers starting together agree on one token.
func TestLoadOrCreateTokenRace(t *testing.T) {
	dir := t.TempDir()
	const n = 16
	toks := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			toks[i], err = LoadOrCreateToken(dir)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	for _, tok := range toks {
		assert.Equal(t, toks[0], tok)
	}
}

func TestReadTokenRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		make  func(t *testing.T, path string)
		want  error
		words string
	}{
		{"mode 0644", writeToken("abc", 0o644), engine.ErrInvalid, "mode 0644"},
		{"mode 0640", writeToken("abc", 0o640), engine.ErrInvalid, "chmod 600"},
		{"mode 0602", writeToken("abc", 0o602), engine.ErrInvalid, "mode 0602"},
		{"empty", writeToken("\n", 0o600), engine.ErrInvalid, "empty"},
		{"two words", writeToken("a b", 0o600), engine.ErrInvalid, "more than one word"},
		{"a directory", func(t *testing.T, p string) { require.NoError(t, os.Mkdir(p, 0o700)) }, engine.ErrInvalid, "not a regular file"},
		{"a symlink", func(t *testing.T, p string) {
			target := filepath.Join(t.TempDir(), "t")
			writeToken("abc", 0o600)(t, target)
			require.NoError(t, os.Symlink(target, p))
		}, engine.ErrInvalid, "symbolic link"},
		{"missing", func(*testing.T, string) {}, fs.ErrNotExist, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), TokenFile)
			tc.make(t, path)
			_, err := ReadToken(path)
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), path)
			assert.Contains(t, err.Error(), tc.words)
		})
	}
	t.Run("another owner", func(t *testing.T) {
		needRoot(t)
		path := filepath.Join(t.TempDir(), TokenFile)
		writeToken("abc", 0o600)(t, path)
		require.NoError(t, os.Chown(path, nobody, nobody))
		_, err := ReadToken(path)
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "owned by uid 65534")
	})
}

// TestReadTokenTrims: a token file's surrounding white space (Unicode
// White_Space, as strings.TrimSpace trims it) is not part of the token;
// U+001C..U+001F are not white space, so a token with one is refused.
// The Python client reads the same cases alike
// (test_token_file_trimmed_as_go_trims_it).
func TestReadTokenTrims(t *testing.T) {
	for _, tc := range []struct {
		content, want string
	}{
		{"abc\n", "abc"},
		{"abc\r\n", "abc"},
		{" \tabc \v\f\n", "abc"},
		{"abc\u00a0\n", "abc"},
		{"\u3000abc\u2028", "abc"},
		{"abc\u0085", "abc"},
		{"abc\x1f\n", ""},
		{"\x1cabc", ""},
		{"abc\x1e", ""},
	} {
		t.Run(fmt.Sprintf("%q", tc.content), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), TokenFile)
			writeToken(tc.content, 0o600)(t, path)
			got, err := ReadToken(path)
			if tc.want == "" {
				require.ErrorIs(t, err, engine.ErrInvalid)
				assert.Contains(t, err.Error(), "one word")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// A named pipe where the token file should be is refused at once, not
// waited on: opening one for reading blocks until a writer comes, and
// whoever made it need never come.
func TestReadTokenRefusesFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), TokenFile)
	require.NoError(t, unix.Mkfifo(path, 0o600))
	errc := make(chan error, 1)
	go func() {
		_, err := ReadToken(path)
		errc <- err
	}()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "not a regular file")
	case <-time.After(5 * time.Second):
		t.Error("ReadToken of a named pipe still waits after 5s")
		// Unblock it: a writer that opens and closes the pipe.
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(t, err)
		w.Close()
		<-errc
	}
}

func writeToken(tok string, mode fs.FileMode) func(t *testing.T, path string) {
	return func(t *testing.T, path string) {
		require.NoError(t, os.WriteFile(path, []byte(tok), 0o600))
		require.NoError(t, os.Chmod(path, mode))
	}
}

// A server refuses to start with a token file others can read.
func TestLoadOrCreateTokenRefusesOpenFile(t *testing.T) {
	dir := t.TempDir()
	writeToken("0123456789abcdef", 0o644)(t, filepath.Join(dir, TokenFile))
	_, err := LoadOrCreateToken(dir)
	require.ErrorIs(t, err, engine.ErrInvalid)
	assert.Contains(t, err.Error(), "mode 0644")

	open := t.TempDir()
	require.NoError(t, os.Chmod(open, 0o777))
	_, err = LoadOrCreateToken(open)
	require.ErrorIs(t, err, engine.ErrInvalid)
	_, err = os.Stat(filepath.Join(open, TokenFile))
	assert.True(t, errors.Is(err, fs.ErrNotExist), "no token written into a directory others can write")
}

func TestFindToken(t *testing.T) {
	dir := t.TempDir()
	fileTok, err := LoadOrCreateToken(dir)
	require.NoError(t, err)
	for _, tc := range []struct {
		name, explicit, env, dataDir, want string
	}{
		{"explicit first", "given", "fromenv", dir, "given"},
		{"then TQ_TOKEN", "", "fromenv", dir, "fromenv"},
		{"then the token file", "", "", dir, fileTok},
		{"else none", "", "", filepath.Join(dir, "missing"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvToken, tc.env)
			if tc.env == "" {
				require.NoError(t, os.Unsetenv(EnvToken)) // set but empty is refused
			}
			t.Setenv(EnvDataDir, tc.dataDir)
			got, err := FindToken(tc.explicit)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	t.Run("an unsafe token file is an error", func(t *testing.T) {
		open := t.TempDir()
		writeToken("abc", 0o644)(t, filepath.Join(open, TokenFile))
		t.Setenv(EnvToken, "")
		require.NoError(t, os.Unsetenv(EnvToken))
		t.Setenv(EnvDataDir, open)
		_, err := FindToken("")
		require.ErrorIs(t, err, engine.ErrInvalid)
	})
	t.Run("a given token that is not one word is refused", func(t *testing.T) {
		// tq serve refuses these too (cmd/tq's validate); a client that
		// sent one as given was refused as unauthenticated, naming nothing.
		t.Setenv(EnvDataDir, dir) // a good token file is not a fallback
		for _, tc := range []struct {
			name, explicit, env, want string
		}{
			{"explicit, trailing newline", "s3cret\n", "", "the token given explicitly: white space around the token (7 bytes; a trailing newline"},
			{"explicit, space inside", "s3 cret", "", "the token given explicitly: white space or a control character inside the token (7 bytes)"},
			{"explicit, control character", "s3\x7fcret", "fromenv", "the token given explicitly: white space or a control character inside"},
			{"$TQ_TOKEN, trailing newline", "", "s3cret\n", "$TQ_TOKEN: white space around the token (7 bytes; a trailing newline"},
			{"$TQ_TOKEN, CRLF", "", "s3cret\r\n", "$TQ_TOKEN: white space around the token (8 bytes"},
			{"$TQ_TOKEN, leading space", "", " s3cret", "$TQ_TOKEN: white space around the token"},
			{"$TQ_TOKEN, newline inside", "", "s3\ncret\n", "$TQ_TOKEN: white space or a control character inside"},
			// Longer than a token file may be: the RESP endpoint's bound
			// on an argument before AUTH is the token's length.
			{"explicit, too long", strings.Repeat("s3", MaxToken/2+1), "", "the token given explicitly: the token is 4098 bytes, longer than the 4096 a token may have"},
			{"$TQ_TOKEN, too long", "", strings.Repeat("s3", 1<<20), "$TQ_TOKEN: the token is 2097152 bytes, longer than the 4096 a token may have"},
			// A Kubernetes Secret with an empty value: taken as unset, the
			// client used the token file (another token) while tq serve
			// refuses it (cmd/tq's validate), with the same words.
			{"$TQ_TOKEN, set but empty", "", "", "$TQ_TOKEN is set but empty (a Secret with an empty value?): set it to the cluster's token, or unset it to use the data directory's token file"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Setenv(EnvToken, tc.env)
				got, err := FindToken(tc.explicit)
				require.ErrorIs(t, err, engine.ErrInvalid, "got token of %d bytes", len(got))
				assert.Contains(t, err.Error(), tc.want)
				assert.NotContains(t, err.Error(), "s3", "the token is not printed")
			})
		}
	})
	t.Run("a token as long as a token file may be is taken", func(t *testing.T) {
		long := strings.Repeat("t", MaxToken)
		t.Setenv(EnvToken, long)
		got, err := FindToken("")
		require.NoError(t, err)
		assert.Equal(t, long, got)
		got, err = FindToken(long)
		require.NoError(t, err)
		assert.Equal(t, long, got)
	})
	t.Run("a given token wins over an empty $TQ_TOKEN", func(t *testing.T) {
		t.Setenv(EnvToken, "")
		t.Setenv(EnvDataDir, dir)
		got, err := FindToken("given")
		require.NoError(t, err)
		assert.Equal(t, "given", got)
	})
	t.Run("hint names the file", func(t *testing.T) {
		t.Setenv(EnvDataDir, dir)
		assert.True(t, strings.Contains(TokenHint(), filepath.Join(dir, TokenFile)), TokenHint())
	})
}

// TestCheckPrivateDirTrailingSlash: a trailing slash (or "/.") makes the
// kernel follow a symbolic link in the last place, so a name written so
// (as shell completion writes a directory) must not let a symbolic link
// pass for the directory itself.
func TestCheckPrivateDirTrailingSlash(t *testing.T) {
	real := filepath.Join(t.TempDir(), "real")
	mkdir(0o700)(t, real)
	link := filepath.Join(t.TempDir(), "link")
	require.NoError(t, os.Symlink(real, link))
	for _, name := range []string{link, link + "/", link + "//", link + "/.", link + "/./"} {
		err := CheckPrivateDir(name)
		require.ErrorIs(t, err, engine.ErrInvalid, "CheckPrivateDir(%q)", name)
		assert.Contains(t, err.Error(), "symbolic link", "CheckPrivateDir(%q)", name)
		require.ErrorIs(t, EnsurePrivateDir(name), engine.ErrInvalid, "EnsurePrivateDir(%q)", name)
		_, err = LoadOrCreateToken(name)
		require.ErrorIs(t, err, engine.ErrInvalid, "LoadOrCreateToken(%q)", name)
	}
	for _, name := range []string{real + "/", real + "/."} {
		require.NoError(t, CheckPrivateDir(name), "the directory itself, as %q", name)
	}
	_, err := os.Stat(filepath.Join(real, TokenFile))
	require.ErrorIs(t, err, fs.ErrNotExist, "no token made through the link")
}

// TestFindTokenUnreadable: a token file that may be there but cannot be
// read is an error naming its path and why, not a missing one. Taken as
// missing, the client sent no token and the server's refusal sent the
// user looking for a token, not at the file that held it.
func TestFindTokenUnreadable(t *testing.T) {
	t.Setenv(EnvToken, "")
	require.NoError(t, os.Unsetenv(EnvToken))
	t.Run("the data directory is a file", func(t *testing.T) {
		// No token file can be there: none, as for a missing one (tests
		// point $TQ_DATA_DIR into /dev/null to say so).
		notDir := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(notDir, []byte("x"), 0o600))
		t.Setenv(EnvDataDir, notDir)
		tok, err := FindToken("")
		require.NoError(t, err)
		assert.Empty(t, tok)
		_, err = ReadToken(filepath.Join(notDir, TokenFile))
		require.ErrorIs(t, err, syscall.ENOTDIR, "ReadToken itself still says why")
		assert.Contains(t, err.Error(), "token file "+filepath.Join(notDir, TokenFile)+" cannot be read: not a directory")
	})
	t.Run("a directory in the token file's place", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(dir, TokenFile), 0o700))
		t.Setenv(EnvDataDir, dir)
		_, err := FindToken("")
		require.ErrorIs(t, err, engine.ErrInvalid)
		assert.Contains(t, err.Error(), "token file "+filepath.Join(dir, TokenFile)+" is not a regular file")
	})
	t.Run("another user's", func(t *testing.T) {
		// Root reads whatever the mode bits say: the lookup runs in a
		// copy of this test binary as another user.
		needRoot(t)
		shared, err := os.MkdirTemp("", "tq-auth-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(shared) })
		require.NoError(t, os.Chmod(shared, 0o755))
		bin := filepath.Join(shared, "auth.test")
		b, err := os.ReadFile(os.Args[0])
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(bin, b, 0o755))
		// Its directory is this user's, which the other may not enter.
		closed := filepath.Join(t.TempDir(), "data")
		_, err = LoadOrCreateToken(closed)
		require.NoError(t, err)
		// Its directory may be entered, the file (0600, this user's) not read.
		open := filepath.Join(shared, "data")
		_, err = LoadOrCreateToken(open)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(open, 0o755))
		for _, dir := range []string{closed, open} {
			cmd := exec.Command(bin, "-test.run=^TestFindTokenHelper$")
			cmd.Dir = shared
			cmd.Env = append(os.Environ(), "TQ_AUTH_HELPER=find", EnvDataDir+"="+dir, "HOME="+shared)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), "FindToken: token file "+filepath.Join(dir, TokenFile)+" cannot be read", "%s", out)
			assert.Contains(t, string(out), "permission denied", "%s", out)
		}
	})
}

// TestFindTokenHelper is TestFindTokenUnreadable's lookup as another user.
func TestFindTokenHelper(t *testing.T) {
	if os.Getenv("TQ_AUTH_HELPER") != "find" {
		t.Skip("a helper of TestFindTokenUnreadable")
	}
	os.Unsetenv(EnvToken)
	tok, err := FindToken("")
	fmt.Printf("FindToken: %v (a token of %d bytes)\n", err, len(tok))
}
