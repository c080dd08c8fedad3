package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/client"
	"github.com/tqgo/tq/controller"
	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/storage"
	"github.com/tqgo/tq/wire"
)

// The Redis protocol's unix socket (--resp-socket) lives in a directory
// no other user can write, as every other socket does: there, anyone
// could put a socket of their own in its place, and redis clients would
// send it their AUTH, the cluster's token.
func TestSecureChecksRESPSocketDir(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode os.FileMode
		want string // "" when accepted
	}{
		{"private", 0o700, ""},
		{"world-writable", 0o777, "mode 0777"},
		{"sticky world-writable", 0o777 | os.ModeSticky, "mode 1777"},
		{"group-writable", 0o770, "mode 0770"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unsetEnv(t, auth.EnvToken)
			dir := filepath.Join(t.TempDir(), "resp")
			require.NoError(t, os.Mkdir(dir, 0o700))
			require.NoError(t, os.Chmod(dir, tc.mode))
			c := defaultServeConfig()
			c.DataDir = filepath.Join(t.TempDir(), "data")
			c.SocketDir = filepath.Join(t.TempDir(), "sock")
			c.RESPSocket = filepath.Join(dir, "resp.sock")
			err := c.secure()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), "--resp-socket's directory")
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// A TCP listener beyond loopback is never open without a token unless
// --insecure says so; by default there always is one (see secure).
func TestCheckExposure(t *testing.T) {
	for _, tc := range []struct {
		name     string
		listen   string
		unit     string
		token    string
		insecure bool
		want     string // "" when accepted
	}{
		{"loopback without a token", "127.0.0.1:7370", "127.0.0.1:0", "", false, ""},
		{"beyond loopback with a token", "0.0.0.0:7370", "10.0.0.2:0", "t", false, ""},
		{"beyond loopback, insecure", "0.0.0.0:7370", "[::]:0", "", true, ""},
		{"controller beyond loopback without a token", "0.0.0.0:7370", "127.0.0.1:0", "", false, "--listen \"0.0.0.0:7370\" listens beyond this host without a token"},
		{"unit beyond loopback without a token", "127.0.0.1:7370", "[::]:0", "", false, "--unit-listen \"[::]:0\" listens beyond this host without a token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultServeConfig()
			c.Listen, c.UnitListen, c.Token, c.Insecure = tc.listen, tc.unit, tc.token, tc.insecure
			err := c.checkExposure()
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// A --config file with a token key is refused, as a token file is, when
// group or others may read or write it, or another user owns it: before,
// a tq.yaml left 0644 (as config files are) handed the cluster's token to
// every user of the host, while the same token in the token file at 0644
// was refused. A config file without the key may be anyone's to read.
func TestConfigFileTokenMustBePrivate(t *testing.T) {
	t.Setenv(auth.EnvToken, "")
	os.Unsetenv(auth.EnvToken)
	dir := t.TempDir()
	args := func(file string) []string {
		return []string{"--config", file, "--data-dir", filepath.Join(t.TempDir(), "data"), "--socket-dir", filepath.Join(t.TempDir(), "sock")}
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
		file := filepath.Join(dir, fmt.Sprintf("tq-%o.yaml", mode))
		require.NoError(t, os.WriteFile(file, []byte("token: s3cret-in-yaml\n"), 0o600))
		require.NoError(t, os.Chmod(file, mode))
		_, _, err := parseServeConfig(args(file), io.Discard)
		require.Error(t, err, "mode %04o", mode)
		assert.Contains(t, err.Error(), fmt.Sprintf("--config %s has mode %04o", file, mode))
		assert.Contains(t, err.Error(), "chmod 600 "+file)
		assert.NotContains(t, err.Error(), "s3cret-in-yaml", "the error never names the token")
	}

	private := filepath.Join(dir, "private.yaml")
	require.NoError(t, os.WriteFile(private, []byte("token: s3cret-in-yaml\n"), 0o600))
	c, _, err := parseServeConfig(args(private), io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "s3cret-in-yaml", c.Token)

	public := filepath.Join(dir, "public.yaml")
	require.NoError(t, os.WriteFile(public, []byte("units: 2\n"), 0o600))
	require.NoError(t, os.Chmod(public, 0o644))
	_, _, err = parseServeConfig(args(public), io.Discard)
	require.NoError(t, err, "no token key: any mode")

	if os.Geteuid() == 0 { // giving the file away needs root
		theirs := filepath.Join(dir, "theirs.yaml")
		require.NoError(t, os.WriteFile(theirs, []byte("token: s3cret-in-yaml\n"), 0o600))
		require.NoError(t, os.Chown(theirs, 65534, 65534))
		_, _, err = parseServeConfig(args(theirs), io.Discard)
		require.Error(t, err, "another user's file with a token key")
		assert.Contains(t, err.Error(), fmt.Sprintf("--config %s has a token key but is owned by uid 65534", theirs))
		assert.NotContains(t, err.Error(), "s3cret-in-yaml", "the error never names the token")
	}
}

// A token: key in the --config file is reported as coming from there, at
// start and by --check-config; it used to be reported as "--token", which
// was not given. A --token flag still wins over the key and is named.
func TestTokenSourceNamesTheConfigFileKey(t *testing.T) {
	t.Setenv(auth.EnvToken, "env")
	dir := t.TempDir()
	file := filepath.Join(dir, "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("token: from-file\n"), 0o600))
	for _, tc := range []struct {
		name      string
		args      []string
		wantFrom  string
		wantToken string
	}{
		{"the key", []string{"--config", file}, "the --config file's token key", "from-file"},
		{"--token over the key", []string{"--config", file, "--token", "from-flag"}, "--token", "from-flag"},
		{"--token alone", []string{"--token", "from-flag"}, "--token", "from-flag"},
		{"--token before --config", []string{"--token", "from-flag", "--config", file}, "--token", "from-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--socket-dir", filepath.Join(t.TempDir(), "sock")}, tc.args...)
			c, _, err := parseServeConfig(args, io.Discard)
			require.NoError(t, err)
			var out strings.Builder
			require.NoError(t, c.checkConfig(&out, io.Discard))
			assert.Contains(t, out.String(), "# tq serve: configuration ok; token from "+tc.wantFrom+"\n")
			require.NoError(t, c.secure())
			assert.Equal(t, tc.wantFrom, c.tokenFrom)
			assert.Equal(t, tc.wantToken, c.Token)
		})
	}
}

func TestSecureResolvesToken(t *testing.T) {
	for _, tc := range []struct {
		name      string
		token     string
		env       string
		insecure  bool
		wantFrom  string // "file": the data directory's token file
		wantToken string
	}{
		{"--token", "flag", "env", false, "--token", "flag"},
		{"$TQ_TOKEN", "", "env", false, "$TQ_TOKEN", "env"},
		{"token file", "", "", false, "file", ""},
		{"insecure", "", "env", true, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(auth.EnvToken, tc.env)
			c := defaultServeConfig()
			c.DataDir = filepath.Join(t.TempDir(), "data")
			c.SocketDir = filepath.Join(t.TempDir(), "sock")
			c.Token, c.Insecure = tc.token, tc.insecure
			require.NoError(t, c.secure())
			if tc.wantFrom == "file" {
				tok, err := auth.ReadToken(filepath.Join(c.DataDir, auth.TokenFile))
				require.NoError(t, err)
				assert.Equal(t, tok, c.Token)
				assert.Equal(t, filepath.Join(c.DataDir, auth.TokenFile), c.tokenFrom)
			} else {
				assert.Equal(t, tc.wantToken, c.Token)
				assert.Equal(t, tc.wantFrom, c.tokenFrom)
				_, err := os.Stat(filepath.Join(c.DataDir, auth.TokenFile))
				assert.True(t, os.IsNotExist(err), "no token file written when the token comes from elsewhere")
			}
			for _, d := range []string{c.DataDir, c.SocketDir} {
				fi, err := os.Stat(d)
				require.NoError(t, err)
				assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), d)
			}
		})
	}
	t.Run("a unit with a token keeps nothing in the data directory", func(t *testing.T) {
		c := defaultServeConfig()
		c.Role, c.Controller, c.Token = "unit", "tcp://127.0.0.1:1", "t"
		c.DataDir, c.SocketDir = filepath.Join(t.TempDir(), "data"), ""
		require.NoError(t, c.secure())
		_, err := os.Stat(c.DataDir)
		assert.True(t, os.IsNotExist(err))
	})
	t.Run("no data directory", func(t *testing.T) {
		c := defaultServeConfig()
		c.DataDir = ""
		err := c.validate()
		require.Error(t, err)
		assert.True(t, strings.Contains(err.Error(), "--data-dir"), err.Error())
	})
}

func TestMetricsAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"9464", "127.0.0.1:9464"},
		{":9464", "127.0.0.1:9464"},
		{"0.0.0.0:9464", "0.0.0.0:9464"},
		{"[::1]:0", "[::1]:0"},
		{"no-port", ""},
	} {
		got, err := metricsAddr(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("metricsAddr(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("metricsAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestNewLogger(t *testing.T) {
	var b strings.Builder
	log, err := newLogger(&b, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("unit lost", "unit", 3)
	var rec map[string]any
	if err := json.Unmarshal([]byte(b.String()), &rec); err != nil {
		t.Fatalf("one JSON record, got %q: %v", b.String(), err)
	}
	if rec["level"] != "WARN" || rec["msg"] != "unit lost" || rec["unit"] != 3.0 {
		t.Errorf("got %v, want level WARN, msg %q, unit 3", rec, "unit lost")
	}
	b.Reset()
	log, _ = newLogger(&b, "text", "debug")
	log.Debug("shown")
	if !strings.Contains(b.String(), "level=DEBUG msg=shown") {
		t.Errorf("text log: got %q", b.String())
	}
}

// `tq serve --check-config` validates as tq serve does, starts nothing,
// creates nothing, leaves the token out, and prints a configuration that
// --config reads back to the same one.
func TestCheckConfig(t *testing.T) {
	unsetEnv(t, auth.EnvToken)
	root := t.TempDir()
	dataDir, sockDir := filepath.Join(root, "data"), filepath.Join(root, "sock")
	args := []string{"--check-config", "--role", "unit", "--controller", "tcp://tq-controller:7370", "--capacity", "4GiB",
		"--unit-listen", ":7371", "--unit-advertise", "10.1.2.3", "--reconcile-interval", "2s", "--huge-pages=false",
		"--data-dir", dataDir, "--socket-dir", sockDir, "--token", "secret", "--metrics", "0.0.0.0:9090", "--shm-quarantine", "-1s"}
	var out, errOut strings.Builder
	require.NoError(t, serve(t.Context(), args, &out, &errOut), errOut.String())
	assert.NotContains(t, out.String(), "secret", "the token is left out")
	first, _, _ := strings.Cut(out.String(), "\n")
	assert.Equal(t, "# tq serve: configuration ok; token from --token", first)
	assert.Contains(t, out.String(), "\nshm_quarantine: -1s\n")
	for _, d := range []string{dataDir, sockDir} {
		_, err := os.Stat(d)
		assert.True(t, os.IsNotExist(err), "--check-config created %s", d)
	}

	want, once, err := parseServeConfig(args, &errOut)
	require.NoError(t, err)
	require.True(t, once.checkConfig)
	assert.Equal(t, int64(4<<30), int64(want.Capacity))
	want.Token = ""
	file := filepath.Join(root, "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte(out.String()), 0o600))
	got := defaultServeConfig()
	require.NoError(t, got.loadYAML(file))
	assert.Equal(t, want, got, "the printed configuration reads back as the same")

	t.Run("the token's source without --token", func(t *testing.T) {
		for _, tc := range []struct{ env, insecure, want string }{
			{"from-env", "false", "token from $TQ_TOKEN"},
			{"", "false", "token from " + filepath.Join(dataDir, auth.TokenFile)},
			{"", "true", "token from none (--insecure)"},
		} {
			t.Setenv(auth.EnvToken, tc.env)
			if tc.env == "" {
				unsetEnv(t, auth.EnvToken) // set but empty is refused
			}
			var out strings.Builder
			require.NoError(t, serve(t.Context(), []string{"--check-config", "--data-dir", dataDir, "--insecure=" + tc.insecure}, &out, io.Discard))
			assert.Contains(t, out.String(), tc.want)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"invalid value", []string{"--check-config", "--role", "unit"}, "needs --controller"},
		{"unknown flag", []string{"--check-config", "--capacty", "1GiB"}, "flag provided but not defined: -capacty"},
		{"flag and value in one argument", []string{"--check-config", "--capacity 1GiB"}, "flag provided but not defined"},
		{"a stray argument", []string{"--check-config", "--role", "all", "unit"}, `unexpected "unit"`},
		{"a relative RESP socket", []string{"--check-config", "--resp-socket", "resp.sock"}, `--resp-socket "resp.sock": give an absolute path`},
		{"a RESP socket on a unit", []string{"--check-config", "--role", "unit", "--controller", "tcp://c:7370", "--resp-socket", "/tmp/r.sock"}, "they need --role all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := serve(t.Context(), tc.args, &out, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Empty(t, out.String())
		})
	}
}

// `tq serve --check-config` refuses what tq serve refuses at start for
// exposure (--pprof beyond loopback without a metrics token), counting
// the metrics token as tq serve does (--metrics-token-file, named, or
// $TQ_METRICS_TOKEN), and warns, as the start does, of --metrics beyond
// loopback without one. It used to report "configuration ok" for a
// --pprof that tq serve then refused to start with.
func TestCheckConfigExposure(t *testing.T) {
	t.Setenv(auth.EnvToken, "s3cret")
	dataDir := filepath.Join(t.TempDir(), "data")
	base := []string{"--check-config", "--data-dir", dataDir}
	for _, tc := range []struct {
		name       string
		args       []string
		metricsEnv string
		wantErr    string // "" when accepted
		wantWarn   string // "" when no warning
	}{
		{name: "pprof beyond loopback without a metrics token", args: []string{"--pprof", "0.0.0.0:6060"},
			wantErr: `--pprof "0.0.0.0:6060" listens beyond this host without a token: set --metrics-token-file or $TQ_METRICS_TOKEN`},
		{name: "pprof beyond loopback with $TQ_METRICS_TOKEN", args: []string{"--pprof", "0.0.0.0:6060"}, metricsEnv: "m"},
		{name: "pprof beyond loopback with --metrics-token-file", args: []string{"--pprof", "0.0.0.0:6060", "--metrics-token-file", "/run/secrets/metrics-token"}},
		{name: "pprof beyond loopback, insecure", args: []string{"--pprof", "0.0.0.0:6060", "--insecure"}},
		{name: "pprof on loopback", args: []string{"--pprof", "6060"}},
		{name: "metrics beyond loopback without a metrics token", args: []string{"--metrics", "0.0.0.0:9090"},
			wantWarn: "tq serve: WARNING: --metrics 0.0.0.0:9090 listens beyond this host without a token"},
		{name: "metrics beyond loopback with $TQ_METRICS_TOKEN", args: []string{"--metrics", "0.0.0.0:9090"}, metricsEnv: "m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "pprof beyond loopback, insecure" {
				unsetEnv(t, auth.EnvToken)
			}
			t.Setenv(envMetricsToken, tc.metricsEnv)
			var out, errOut strings.Builder
			err := serve(t.Context(), append(append([]string{}, base...), tc.args...), &out, &errOut)
			if tc.wantErr != "" {
				require.Error(t, err, "configuration accepted:\n%s", out.String())
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.Empty(t, out.String())
			} else {
				require.NoError(t, err)
				assert.Contains(t, out.String(), "# tq serve: configuration ok")
			}
			if tc.wantWarn != "" {
				assert.Contains(t, errOut.String(), tc.wantWarn)
			} else {
				assert.Empty(t, errOut.String())
			}
			_, err = os.Stat(dataDir)
			assert.True(t, os.IsNotExist(err), "--check-config created %s", dataDir)
		})
	}
}

// unsetEnv unsets key for the test, restoring it after (t.Setenv has no
// unset of its own).
func unsetEnv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "")
	require.NoError(t, os.Unsetenv(key))
}

// TestConfigKeysAreFlags: every key of a config file is also a flag of
// the same name, with dashes for underscores, setting the same value.
func TestConfigKeysAreFlags(t *testing.T) {
	c := defaultServeConfig()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c.flags(fs)
	typ := reflect.TypeOf(c)
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		if key == "" || key == "-" {
			continue
		}
		f := fs.Lookup(strings.ReplaceAll(key, "_", "-"))
		if !assert.NotNil(t, f, "config key %s has no flag --%s", key, strings.ReplaceAll(key, "_", "-")) {
			continue
		}
		// The flag's value is the field the key sets.
		field := reflect.ValueOf(&c).Elem().Field(i)
		assert.Equal(t, field.Addr().Pointer(), reflect.ValueOf(f.Value).Pointer(), "--%s sets another field than config key %s", f.Name, key)
	}
}

// tq serve refuses a configuration it would otherwise take wrongly —
// wrap a size, truncate a number, ignore a document or a flag, retry a
// malformed address — and each error names the flag or key and the value.
func TestServeConfigRefusesWhatItWouldTakeWrongly(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	dir := t.TempDir()
	yamlFile := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // each in the error
	}{
		{"a size past 2^64 bytes", []string{"--capacity", "17179869185GiB"}, []string{"-capacity", `"17179869185GiB"`, "too large"}},
		{"a size of exactly 2^64 bytes", []string{"--capacity", "17179869184GiB"}, []string{"-capacity", "too large"}},
		{"a size past 2^63 bytes", []string{"--resp-max-value", "9223372036854775808B"}, []string{"-resp-max-value"}},
		{"a float for an integer key", []string{"--config", yamlFile("float.yaml", "units: 3.9\nloops: 1.5\n")}, []string{`units "3.9": not an integer`, `loops "1.5": not an integer`}},
		{"a string for an integer key", []string{"--config", yamlFile("str.yaml", "pre_alloc: many\n")}, []string{`pre_alloc "many": not an integer`}},
		{"a string for a bool key", []string{"--config", yamlFile("strbool.yaml", "huge_pages: \"false\"\n")}, []string{`line 1: huge_pages "false": want a bool, true or false (unquoted)`}},
		{"a number for a bool key", []string{"--config", yamlFile("intbool.yaml", "in_memory: 0\n")}, []string{`line 1: in_memory "0": want a bool`}},
		{"a list for a bool key", []string{"--config", yamlFile("seqbool.yaml", "insecure: [true]\n")}, []string{"line 1: insecure", "want a bool"}},
		{"a list for a string key", []string{"--config", yamlFile("seqstr.yaml", "name: [a, b]\n")}, []string{"line 1: name: want a string"}},
		{"a size that wraps in a config file", []string{"--config", yamlFile("size.yaml", "capacity: 17179869185GiB\n")}, []string{`capacity "17179869185GiB"`}},
		{"a second YAML document", []string{"--config", yamlFile("two.yaml", "units: 3\n---\nunits: 9\n")}, []string{"2 YAML documents"}},
		{"a negative shutdown timeout", []string{"--shutdown-timeout", "-5s"}, []string{"--shutdown-timeout -5s: must not be negative"}},
		{"a negative reconcile interval", []string{"--reconcile-interval", "-1s"}, []string{"--reconcile-interval -1s: must not be negative"}},
		{"a negative reserve wait", []string{"--reserve-wait", "-1s"}, []string{"--reserve-wait -1s: must not be negative"}},
		{"a reserve wait past a client's ping timeout", []string{"--reserve-wait", "9s"}, []string{"--reserve-wait 9s: must be at most 8s"}},
		{"a negative reconcile grace", []string{"--reconcile-grace", "-1s"}, []string{"--reconcile-grace -1s: must not be negative"}},
		{"a quarantine that is no duration", []string{"--shm-quarantine", "soon"}, []string{`invalid value "soon" for flag -shm-quarantine`}},
		{"a quarantine without its unit", []string{"--shm-quarantine", "30"}, []string{`invalid value "30" for flag -shm-quarantine`}},
		{"a quarantine in a config file that is no duration", []string{"--config", yamlFile("quarantine.yaml", "shm_quarantine: soon\n")}, []string{`shm_quarantine "soon": want a duration like 30s, 2m or -1s`}},
		{"a quarantine in a config file without its unit", []string{"--config", yamlFile("quarantine30.yaml", "shm_quarantine: 30\n")}, []string{`line 1: shm_quarantine "30": want a duration`}},
		{"a zero quarantine in a config file without its unit", []string{"--config", yamlFile("quarantine0.yaml", "shm_quarantine: 0\n")}, []string{`line 1: shm_quarantine "0": want a duration`}},
		{"a controller with --shm-quarantine", []string{"--role", "controller", "--shm-quarantine", "1m"}, []string{"--shm-quarantine 1m0s: not used by --role controller"}},
		{"loops below -1", []string{"--loops", "-7"}, []string{"--loops -7"}},
		{"RESP loops below -1", []string{"--resp-loops", "-2"}, []string{"--resp-loops -2"}},
		{"a RESP partition with a brace", []string{"--resp", "127.0.0.1:0", "--resp-partition", "a}b"}, []string{`--resp-partition "a}b": a '}' cannot`}},
		{"a RESP partition not UTF-8", []string{"--resp", "127.0.0.1:0", "--resp-partition", "a\xff"}, []string{`--resp-partition: partition id "a\xff" is not valid UTF-8`}},
		{"a RESP partition too long", []string{"--resp", "127.0.0.1:0", "--resp-partition", strings.Repeat("p", 65537)}, []string{`--resp-partition: partition id "pppp`, `is 65537 bytes long; TQ's keys, fields and partitions are at most 65536 bytes`}},
		{"a listen port past 65535", []string{"--listen", "127.0.0.1:99999"}, []string{`--listen "127.0.0.1:99999"`, `port "99999"`}},
		{"a unit listen port past 65535", []string{"--unit-listen", "127.0.0.1:65536"}, []string{`--unit-listen "127.0.0.1:65536"`}},
		{"a RESP port past 65535", []string{"--resp", ":70000"}, []string{`--resp ":70000"`}},
		{"a metrics port past 65535", []string{"--metrics", "127.0.0.1:70000"}, []string{`--metrics "127.0.0.1:70000"`}},
		{"an advertised port past 65535", []string{"--advertise", "h:70000"}, []string{`--advertise "h:70000"`}},
		// net.Listen takes an empty port for 0: any free port. A user who
		// left the port out made a mistake; port 0 is asked for as "0".
		{"a listen address with an empty port", []string{"--listen", "127.0.0.1:"}, []string{`--listen "127.0.0.1:"`, "no port"}},
		{"a unit listen address with an empty port", []string{"--unit-listen", "127.0.0.1:"}, []string{`--unit-listen "127.0.0.1:"`, "no port"}},
		{"a RESP address with an empty port", []string{"--resp", ":"}, []string{`--resp ":"`, "no port"}},
		{"a metrics address with an empty port", []string{"--metrics", ":"}, []string{`--metrics ":"`, "no port"}},
		{"a pprof address with an empty port", []string{"--pprof", "127.0.0.1:"}, []string{`--pprof "127.0.0.1:"`, "no port"}},
		{"a listen address with an empty port in a config file", []string{"--config", yamlFile("emptyport.yaml", "listen: \"h:\"\n")}, []string{`--listen "h:"`, "no port"}},
		{"a controller address with an empty port", []string{"--role", "unit", "--controller", "tcp://h:"}, []string{`--controller "tcp://h:"`, "no port"}},
		{"--in-memory with --fsync", []string{"--in-memory", "--fsync", "never"}, []string{"--fsync never", "--in-memory", "no log"}},
		{"in_memory with fsync in a config file", []string{"--config", yamlFile("memfsync.yaml", "in_memory: true\nfsync: always\n")}, []string{"--fsync always", "--in-memory"}},
		{"a unit with --units", []string{"--role", "unit", "--controller", "tcp://h:1", "--units", "5"}, []string{"--units 5: not used by --role unit"}},
		{"a unit with --resp-partition", []string{"--role", "unit", "--controller", "tcp://h:1", "--resp-partition", "p"}, []string{"--resp-partition p: not used by --role unit"}},
		{"a unit with --listen", []string{"--role", "unit", "--controller", "tcp://h:1", "--listen", "127.0.0.1:1"}, []string{"--listen 127.0.0.1:1: not used by --role unit"}},
		{"a unit with units in its config file", []string{"--role", "unit", "--controller", "tcp://h:1", "--config", yamlFile("unit.yaml", "units: 4\n")}, []string{"--units 4: not used by --role unit"}},
		{"a controller with --capacity", []string{"--role", "controller", "--capacity", "2GiB"}, []string{"--capacity 2 GiB: not used by --role controller"}},
		{"a controller with --controller", []string{"--role", "controller", "--controller", "tcp://h:1"}, []string{"--controller tcp://h:1: not used by --role controller"}},
		{"all with --controller-wait", []string{"--controller-wait", "1s"}, []string{"--controller-wait 1s: not used by --role all"}},
		{"a controller address without a port", []string{"--role", "unit", "--controller", "bogus"}, []string{`--controller "bogus"`, "missing port"}},
		{"a controller address of another scheme", []string{"--role", "unit", "--controller", "http://h:1"}, []string{`--controller "http://h:1"`, "want tcp://HOST:PORT or unix:///PATH"}},
		{"a controller address without a host", []string{"--role", "unit", "--controller", "tcp://:7370"}, []string{`--controller "tcp://:7370"`, "no host"}},
		{"a controller port past 65535", []string{"--role", "unit", "--controller", "tcp://h:99999"}, []string{`--controller "tcp://h:99999"`, `port "99999"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			err := serve(t.Context(), append([]string{"--check-config"}, tc.args...), &out, io.Discard)
			require.Error(t, err, "accepted:\n%s", out.String())
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"a unit at the defaults of flags it does not use", []string{"--role", "unit", "--controller", "unix:///run/tq/controller.sock", "--units", "2", "--listen", "127.0.0.1:7370"}},
		{"a controller address as host:port", []string{"--role", "unit", "--controller", "h:7370"}},
		{"loops -1", []string{"--loops", "-1", "--resp", "127.0.0.1:0", "--resp-loops", "-1"}},
		{"a negative quarantine: none", []string{"--shm-quarantine", "-1s"}},
		{"quarantine 0: the default", []string{"--shm-quarantine", "0"}},
		{"a quarantine in a config file", []string{"--config", yamlFile("q.yaml", "shm_quarantine: 2m\n")}},
		{"no quarantine in a config file", []string{"--config", yamlFile("qoff.yaml", "shm_quarantine: \"-1s\"\n")}},
		{"a unit's quarantine", []string{"--role", "unit", "--controller", "tcp://h:1", "--shm-quarantine", "10s"}},
		{"the largest size", []string{"--capacity", "9223372036854775807"}},
		{"--in-memory with --fsync at its default", []string{"--in-memory", "--fsync", "batch"}},
		{"port 0 asked for", []string{"--listen", "127.0.0.1:0", "--unit-listen", ":0", "--resp", "127.0.0.1:0", "--metrics", ":0", "--pprof", "0"}},
		{"bools in a config file", []string{"--config", yamlFile("bools.yaml", "huge_pages: False\nin_memory: off\n")}},
		{"a config file of one document", []string{"--config", yamlFile("one.yaml", "---\nunits: 3\ncapacity: 64MiB\n")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, serve(t.Context(), append([]string{"--check-config"}, tc.args...), io.Discard, io.Discard))
		})
	}
	t.Run("--check-config's output of --in-memory reads back", func(t *testing.T) {
		var out strings.Builder
		require.NoError(t, serve(t.Context(), []string{"--check-config", "--in-memory"}, &out, io.Discard))
		file := yamlFile("backmem.yaml", out.String())
		require.NoError(t, serve(t.Context(), []string{"--check-config", "--config", file}, io.Discard, io.Discard))
	})
	t.Run("--check-config's output of a unit reads back", func(t *testing.T) {
		var out strings.Builder
		require.NoError(t, serve(t.Context(), []string{"--check-config", "--role", "unit", "--controller", "tcp://h:1", "--capacity", "64MiB"}, &out, io.Discard))
		file := yamlFile("back.yaml", out.String())
		require.NoError(t, serve(t.Context(), []string{"--check-config", "--config", file}, io.Discard, io.Discard))
	})
}

// A storage unit heartbeats no faster than every 10 ms (every second when
// told less than a millisecond) and the controller reports it dead after
// five intervals: a --heartbeat below 10 ms, as a flag or a config key,
// would have healthy units reported lost, so it is refused, naming the
// flag and the value. 10 ms itself is taken.
func TestHeartbeatBelowTheUnitsFloorIsRefused(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("heartbeat_interval: 5ms\n"), 0o600))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--heartbeat", "1ms"}, "--heartbeat 1ms: must be at least 10ms"},
		{[]string{"--heartbeat-interval", "500us"}, "--heartbeat 500µs: must be at least 10ms"},
		{[]string{"--heartbeat", "9ms"}, "--heartbeat 9ms: must be at least 10ms"},
		{[]string{"--heartbeat", "0s"}, "--heartbeat 0s: must be at least 10ms"},
		{[]string{"--config", file}, "--heartbeat 5ms: must be at least 10ms"},
	} {
		_, _, err := parseServeConfig(append([]string{"--check-config", "--data-dir", dir}, tc.args...), io.Discard)
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
	_, _, err := parseServeConfig([]string{"--check-config", "--data-dir", dir, "--heartbeat", "10ms"}, io.Discard)
	assert.NoError(t, err)
}

// A storage unit heartbeats at the interval its controller tells it:
// --heartbeat and --heartbeat-interval (or the heartbeat_interval key)
// would be ignored with --role unit, so they are refused there, as every
// flag a role does not use is; the default passes.
func TestHeartbeatIsRefusedForAUnit(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "unit.yaml")
	require.NoError(t, os.WriteFile(file, []byte("heartbeat_interval: 3s\n"), 0o600))
	unit := []string{"--check-config", "--role", "unit", "--controller", "tcp://h:1", "--data-dir", dir}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--heartbeat", "10s"}, "--heartbeat 10s: not used by --role unit"},
		{[]string{"--heartbeat-interval", "10s"}, "--heartbeat 10s: not used by --role unit"},
		{[]string{"--config", file}, "--heartbeat 3s: not used by --role unit"},
	} {
		_, _, err := parseServeConfig(append(unit, tc.args...), io.Discard)
		if assert.Error(t, err, "%q with --role unit was accepted and is ignored", tc.args) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
	_, _, err := parseServeConfig(append(unit, "--heartbeat", "1s"), io.Discard)
	assert.NoError(t, err, "the default")
	_, _, err = parseServeConfig([]string{"--check-config", "--role", "controller", "--heartbeat", "10s", "--data-dir", dir}, io.Discard)
	assert.NoError(t, err, "a controller's")
}

// A relative --socket-dir or --socket is made absolute: the storage units
// register unix:// and shm:// paths under it, and the controller hands
// those to every client, which resolved a relative one against its own
// working directory and could not reach the units from another.
func TestRelativeSocketPathsAreGivenOutAbsolute(t *testing.T) {
	root := t.TempDir()
	t.Chdir(root)
	cfg, _, err := parseServeConfig([]string{"--check-config", "--data-dir", root, "--socket-dir", "socks", "--socket", "ctl/c.sock"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(root, "socks"), cfg.SocketDir)
	assert.Equal(t, filepath.Join(root, "ctl", "c.sock"), cfg.Socket)

	s := startInProcess(t, "--socket-dir", "socks", "--unit-listen", "")
	addrs := slices.Clone(s.addrs)
	for _, u := range s.ctrlSrv.Units() {
		addrs = append(addrs, u.Addrs...)
	}
	require.NotEmpty(t, addrs)
	for _, a := range addrs {
		for _, scheme := range []string{"unix://", "shm://"} {
			if p, ok := strings.CutPrefix(a, scheme); ok {
				assert.Equal(t, filepath.Join(root, "socks"), filepath.Dir(p), "address given out to clients: %s", a)
			}
		}
	}
	// A client in another directory reaches the unit.
	t.Chdir(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Connect(ctx, "unix://"+filepath.Join(root, "socks", "controller.sock"), client.ConnectConfig{WaitForUnits: true, Name: "relative-socket-dir"})
	require.NoError(t, err)
	defer c.Close()
	col := engine.BytesOf([][]byte{[]byte("v")})
	_, err = kvapi.New(c).BatchPut(ctx, "p", []string{"k"}, engine.MustBatch(engine.Field{Name: "v", Col: col}), nil)
	assert.NoError(t, err, "a put from a client in another working directory")
}

// A storage unit with neither a TCP listener (--unit-listen "") nor unix
// sockets (--socket-dir "") registered with no address a client could
// dial, and reported ready: no client could reach it, yet placement could
// pick it. It is refused, as a controller that listens nowhere is; either
// one is enough. --rdma-device is not: RDMA's control requests go over
// the unit's TCP connection, so a unit with --rdma-device and
// --unit-listen "" advertised rdma:// that no client could use (one with
// no other address was unreachable); it is refused, in every role.
func TestAUnitThatListensNowhereIsRefused(t *testing.T) {
	dir := t.TempDir()
	unit := []string{"--check-config", "--role", "unit", "--controller", "tcp://h:1", "--data-dir", dir}
	file := filepath.Join(dir, "unit.yaml")
	require.NoError(t, os.WriteFile(file, []byte("unit_listen: \"\"\nsocket_dir: \"\"\n"), 0o600))
	for _, args := range [][]string{{"--unit-listen", "", "--socket-dir", ""}, {"--config", file}} {
		_, _, err := parseServeConfig(append(unit, args...), io.Discard)
		if assert.Error(t, err, "a storage unit that listens nowhere: %q", args) {
			assert.Contains(t, err.Error(), `--unit-listen "" and --socket-dir "": a storage unit of --role unit needs an address`)
		}
	}
	for _, args := range [][]string{
		{"--unit-listen", ""},
		{"--socket-dir", ""},
		{"--socket-dir", "", "--rdma-device", "emu0"},
	} {
		_, _, err := parseServeConfig(append(unit, args...), io.Discard)
		assert.NoError(t, err, "%q", args)
	}
	for _, args := range [][]string{
		append(slices.Clone(unit), "--unit-listen", "", "--socket-dir", "", "--rdma-device", "emu0"),
		append(slices.Clone(unit), "--unit-listen", "", "--rdma-device", "emu0"),
		{"--check-config", "--data-dir", dir, "--unit-listen", "", "--rdma-device", "emu0"},
	} {
		_, _, err := parseServeConfig(args, io.Discard)
		if assert.Error(t, err, "%q", args) {
			assert.Contains(t, err.Error(), `--rdma-device emu0 with --unit-listen "": RDMA's control requests go over the storage unit's TCP connection`)
		}
	}
}

// A config key with no value (YAML null: `listen:`, `listen: ~`) left
// the setting at its default: an operator who wrote `listen:` to turn the
// TCP listener off got 127.0.0.1:7370. It is refused with its line, and
// for a string key the way to say none; `listen: ""` is taken.
func TestConfigKeyWithoutAValueIsRefused(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("units: 1\nlisten:\nhuge_pages: ~\nresp_partition: null\n"), 0o600))
	_, _, err := parseServeConfig([]string{"--config", file, "--data-dir", dir}, io.Discard)
	require.Error(t, err)
	for _, want := range []string{
		`line 2: listen has no value, which would keep its default: write listen: "" for none`,
		"line 3: huge_pages has no value, which would keep its default: give one",
		`line 4: resp_partition has no value, which would keep its default: write resp_partition: "" for none`,
	} {
		assert.Contains(t, err.Error(), want)
	}

	require.NoError(t, os.WriteFile(file, []byte("listen: \"\"\n"), 0o600))
	cfg, _, err := parseServeConfig([]string{"--config", file, "--data-dir", dir}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "", cfg.Listen)
}

// --max-partitions (max_partitions) reaches the controller's
// MaxPartitions; its default is the controller's, and a unit refuses it.
func TestMaxPartitionsFlag(t *testing.T) {
	dir := t.TempDir()
	cfg, _, err := parseServeConfig([]string{"--check-config", "--data-dir", dir}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, controller.DefaultMaxPartitions, cfg.MaxPartitions)
	cfg, _, err = parseServeConfig([]string{"--check-config", "--data-dir", dir, "--max-partitions", "3"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 3, cfg.MaxPartitions)
	_, _, err = parseServeConfig([]string{"--check-config", "--data-dir", dir, "--role", "unit", "--controller", "tcp://127.0.0.1:1", "--max-partitions", "3"}, io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "max-partitions")
}

// Every storage unit of --role all listens on --unit-listen: a fixed port
// there can be bound by one unit only, so with more than one the second
// failed at start, once the controller and the first unit were up, with
// "bind: address already in use" naming no flag. It is refused up front,
// naming both flags; port 0 (each unit its own free port) and a single
// unit are taken.
func TestUnitsOnOneFixedPortAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	checkConfigCases(t, []configCase{
		{[]string{"--units", "2", "--unit-listen", "127.0.0.1:7411"}, `--units 2 with --unit-listen "127.0.0.1:7411"`},
		{[]string{"--units", "3", "--unit-listen", ":7411"}, `--units 3 with --unit-listen ":7411"`},
		{[]string{"--units", "2", "--unit-listen", "127.0.0.1:http"}, `--units 2 with --unit-listen "127.0.0.1:http"`},
		{[]string{"--units", "2", "--unit-listen", "127.0.0.1:0"}, ""},
		{[]string{"--units", "1", "--unit-listen", "127.0.0.1:7411"}, ""},
		{[]string{"--role", "unit", "--controller", "tcp://h:1", "--unit-listen", "127.0.0.1:7411"}, ""},
	})
}

// A unix socket's path has at most 107 bytes (sun_path, less its NUL): a
// longer --socket-dir, --socket or --resp-socket passed --check-config
// and failed at start, once the controller was made, with "bind: invalid
// argument". It is refused up front, naming the flag, the path's length
// and the limit; under --socket-dir the longest name counts (a unit's
// fd socket, unit-ID.sock.shm, with an id of 5 digits, as many as the
// most units a controller holds).
func TestSocketPathsPastTheUnixLimitAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	long := func(n int) string { return "/" + strings.Repeat("s", n-1) } // n bytes
	// The longest name under --socket-dir is "/unit-65536.sock.shm", 20
	// bytes: a directory of 87 bytes leaves 107.
	checkConfigCases(t, []configCase{
		{[]string{"--socket-dir", long(88)}, "--socket-dir"},
		{[]string{"--socket-dir", long(87)}, ""},
		{[]string{"--role", "unit", "--controller", "tcp://h:1", "--socket-dir", long(88)}, "--socket-dir"},
		{[]string{"--socket", long(108)}, "--socket"},
		{[]string{"--socket", long(107)}, ""},
		{[]string{"--resp-socket", long(108)}, "--resp-socket"},
		{[]string{"--resp-socket", long(107)}, ""},
		{[]string{"--socket-dir", long(88)}, "at most 107"},
		{[]string{"--socket", long(108)}, "at most 107"},
		{[]string{"--resp-socket", long(108)}, "at most 107"},
	})
}

// Two unix sockets of one process at one path passed --check-config and
// failed at start, once the controller was made, with "address already
// in use". It is refused up front, naming both flags and the path.
func TestSocketsAtOnePathAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	checkConfigCases(t, []configCase{
		{[]string{"--socket", sock, "--resp-socket", sock}, "--socket and --resp-socket: both bind the unix socket " + sock},
		{[]string{"--socket-dir", dir, "--resp-socket", filepath.Join(dir, "controller.sock")}, "--socket-dir and --resp-socket: both bind the unix socket " + filepath.Join(dir, "controller.sock")},
		{[]string{"--socket-dir", dir, "--resp-socket", filepath.Join(dir, "unit-1.sock")}, "--resp-socket " + filepath.Join(dir, "unit-1.sock") + ": a storage unit binds its socket"},
		{[]string{"--socket-dir", dir, "--socket", filepath.Join(dir, "unit-2.sock.shm")}, "--socket " + filepath.Join(dir, "unit-2.sock.shm") + ": a storage unit binds its socket"},
		{[]string{"--socket-dir", dir, "--socket", filepath.Join(dir, "unit.sock"), "--resp-socket", filepath.Join(dir, "resp.sock")}, ""},
		// A controller alone binds no unit's socket.
		{[]string{"--role", "controller", "--socket-dir", dir, "--socket", filepath.Join(dir, "unit-1.sock")}, ""},
	})
}

// --pre-alloc rows are made when a partition is: the controller allocates
// them at once, so a huge value (a typo, a byte count) passed
// --check-config and started; then the controller's first partition
// panicked ("makeslice: cap out of range", past the index space) or
// asked for more memory than the host has. It is refused up front,
// naming the flag and the limit.
func TestPreAllocPastItsLimitIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	file := filepath.Join(t.TempDir(), "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("pre_alloc: 100000000000\n"), 0o600))
	checkConfigCases(t, []configCase{
		{[]string{"--pre-alloc", "100000000000"}, "--pre-alloc 100000000000: at most 16777216"},
		{[]string{"--pre-alloc", "4611686018427387904"}, "--pre-alloc 4611686018427387904: at most 16777216"},
		{[]string{"--pre-alloc", "16777217"}, "--pre-alloc 16777217: at most 16777216"},
		{[]string{"--config", file}, "--pre-alloc 100000000000: at most 16777216"},
		{[]string{"--pre-alloc", "16777216"}, ""},
		{[]string{"--pre-alloc", "1024"}, ""},
	})
}

// A storage unit heartbeats no slower than every minute, whatever its
// controller tells it (storage/join.go's ceiling), while the controller
// reports a unit dead after five of its own --heartbeat: above a minute
// that is no longer five of the units' heartbeats, and past about 512409h
// five intervals overflow, the controller falls back to a 5 s timeout and
// reports every healthy unit, heartbeating each minute, lost. It is
// refused, naming the flag and the value; a minute itself is taken.
func TestHeartbeatAboveTheUnitsCeilingIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	file := filepath.Join(t.TempDir(), "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("heartbeat_interval: 1000000h\n"), 0o600))
	checkConfigCases(t, []configCase{
		{[]string{"--heartbeat", "1000000h"}, "--heartbeat 1000000h0m0s: must be at most 1m0s"},
		{[]string{"--heartbeat-interval", "61s"}, "--heartbeat 1m1s: must be at most 1m0s"},
		{[]string{"--role", "controller", "--heartbeat", "10m"}, "--heartbeat 10m0s: must be at most 1m0s"},
		{[]string{"--config", file}, "--heartbeat 1000000h0m0s: must be at most 1m0s"},
		{[]string{"--heartbeat", "1m"}, ""},
		{[]string{"--role", "controller", "--heartbeat", "30s"}, ""},
	})
}

// The Redis-protocol endpoint's own flags without the endpoint would be
// ignored: they are refused, naming them. --check-config used to say ok.
func TestRESPFlagsWithoutTheEndpointAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	checkConfigCases(t, []configCase{
		{[]string{"--resp-partition", "foo"}, `--resp-partition foo: used only with --resp or --resp-socket`},
		{[]string{"--resp-max-value", "1MiB"}, `--resp-max-value 1 MiB: used only with --resp or --resp-socket`},
		{[]string{"--resp-loops", "-1"}, `--resp-loops -1: used only with --resp or --resp-socket`},
		{[]string{"--resp", "127.0.0.1:0", "--resp-partition", "foo", "--resp-loops", "-1"}, ""},
		{[]string{"--resp-socket", filepath.Join(t.TempDir(), "r.sock"), "--resp-max-value", "1MiB"}, ""},
	})
}

// configCase is a --check-config run of tq serve with args: refused with
// an error containing want, or accepted for want "".
type configCase struct {
	args []string
	want string
}

func checkConfigCases(t *testing.T, cases []configCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, _, err := parseServeConfig(append([]string{"--check-config"}, tc.args...), io.Discard)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// Two TCP listeners of one process on one address: the second failed at
// start, once the first server was up, with "bind: address already in
// use" naming no flag (--resp on the controller's --listen, --metrics
// given as the controller's port). It is refused up front, naming both
// flags and the address; port 0 never clashes, nor does a listener the
// role does not open (a unit's --listen default), nor a wildcard of one
// family and an address of the other.
func TestListenersOnOneAddressAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	checkConfigCases(t, []configCase{
		{[]string{"--resp", "127.0.0.1:7370"}, `--resp "127.0.0.1:7370" and --listen "127.0.0.1:7370": both listen on port 7370`},
		{[]string{"--metrics", "7370"}, `--metrics "7370" and --listen "127.0.0.1:7370"`},
		{[]string{"--metrics", "localhost:7370"}, `--metrics "localhost:7370" and --listen "127.0.0.1:7370"`},
		{[]string{"--units", "1", "--unit-listen", "127.0.0.1:7370"}, `--unit-listen "127.0.0.1:7370" and --listen "127.0.0.1:7370"`},
		{[]string{"--listen", ":7400", "--resp", "127.0.0.1:7400"}, `--resp "127.0.0.1:7400" and --listen ":7400"`},
		{[]string{"--listen", "127.0.0.1:http", "--resp", "127.0.0.1:80"}, `--resp "127.0.0.1:80" and --listen "127.0.0.1:http"`},
		{[]string{"--metrics", ":6060", "--pprof", "6060"}, `--pprof "6060" and --metrics ":6060"`},
		{[]string{"--role", "controller", "--listen", "[::]:7400", "--metrics", "0.0.0.0:7400"}, `--metrics "0.0.0.0:7400" and --listen "[::]:7400"`},
		{[]string{"--role", "unit", "--controller", "tcp://h:1", "--unit-listen", "127.0.0.1:7400", "--metrics", "7400"}, `--metrics "7400" and --unit-listen "127.0.0.1:7400"`},
		{[]string{"--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0", "--metrics", "0", "--pprof", ":0"}, ""},
		{[]string{"--role", "unit", "--controller", "tcp://h:1", "--unit-listen", "127.0.0.1:7370"}, ""},
		{[]string{"--listen", "127.0.0.1:7370", "--resp", "127.0.0.2:7370"}, ""},
		{[]string{"--listen", "0.0.0.0:7400", "--resp", "[::1]:7400"}, ""},
		{[]string{"--metrics", "9090", "--pprof", "6060", "--resp", "127.0.0.1:6380"}, ""},
	})
}

// --heartbeat is --heartbeat-interval's other spelling: both given with
// different values took the last on the command line without a word. They
// are refused, naming both and their values; the same value twice, or
// either spelling over a config file's heartbeat_interval, is taken.
func TestBothHeartbeatSpellingsWithDifferentValuesAreRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	file := filepath.Join(t.TempDir(), "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("heartbeat_interval: 3s\n"), 0o600))
	checkConfigCases(t, []configCase{
		{[]string{"--heartbeat-interval", "2s", "--heartbeat", "5s"}, "--heartbeat-interval 2s and --heartbeat 5s: two spellings of one setting"},
		{[]string{"--heartbeat", "5s", "--heartbeat-interval", "2s"}, "--heartbeat-interval 2s and --heartbeat 5s: two spellings of one setting"},
		{[]string{"--config", file, "--heartbeat", "5s", "--heartbeat-interval", "2s"}, "--heartbeat-interval 2s and --heartbeat 5s"},
		{[]string{"--heartbeat", "2s", "--heartbeat-interval", "2000ms"}, ""},
		{[]string{"--config", file, "--heartbeat", "5s"}, ""},
	})
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{[]string{"--heartbeat", "5s"}, 5 * time.Second},
		{[]string{"--heartbeat-interval", "4s"}, 4 * time.Second},
		{[]string{"--config", file}, 3 * time.Second},
		{[]string{"--config", file, "--heartbeat", "5s"}, 5 * time.Second},
		{[]string{"--config", file, "--heartbeat-interval", "4s"}, 4 * time.Second},
		{nil, time.Second},
	} {
		cfg, _, err := parseServeConfig(append([]string{"--check-config"}, tc.args...), io.Discard)
		require.NoError(t, err, "%q", tc.args)
		assert.Equal(t, tc.want, cfg.HeartbeatInterval, "%q", tc.args)
	}
}

// A token given by hand with white space around it (a trailing newline:
// TQ_TOKEN from a Kubernetes Secret made with --from-file, a YAML block
// scalar) or inside it was served as given: clients that read the token
// file (trimmed) or were given it stripped were refused as
// unauthenticated, naming nothing. It is refused up front, naming where
// it came from, without the token; $TQ_TOKEN only when it is the one
// used (no --token).
func TestATokenThatIsNotOneWordIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	file := filepath.Join(t.TempDir(), "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte("token: |\n  s3cret\n"), 0o600))
	t.Run("--token", func(t *testing.T) {
		unsetEnv(t, auth.EnvToken)
		checkConfigCases(t, []configCase{
			{[]string{"--token", "s3cret\n"}, "--token: white space around the token (7 bytes; a trailing newline"},
			{[]string{"--token", " s3cret"}, "--token: white space around the token"},
			{[]string{"--config", file}, "--token: white space around the token (7 bytes"},
			{[]string{"--token", "s3 cret"}, "--token: white space or a control character inside the token (7 bytes)"},
			{[]string{"--token", "s3\ncret\n"}, "--token: white space or a control character inside the token"},
			{[]string{"--token", "s3\x7fcret"}, "--token: white space or a control character inside the token"},
			{[]string{"--token", strings.Repeat("s3", 2049)}, "--token: the token is 4098 bytes, longer than the 4096 a token may have"},
			{[]string{"--token", strings.Repeat("s3", 2048)}, ""},
			{[]string{"--role", "unit", "--controller", "tcp://h:1", "--token", "s3cret\r\n"}, "--token: white space around the token"},
			{[]string{"--token", "s3cret"}, ""},
		})
	})
	t.Run("$TQ_TOKEN", func(t *testing.T) {
		t.Setenv(auth.EnvToken, "s3cret\n")
		checkConfigCases(t, []configCase{
			{nil, "$TQ_TOKEN: white space around the token (7 bytes"},
			{[]string{"--token", "s3cret"}, ""}, // $TQ_TOKEN is not used
		})
	})
	t.Run("$TQ_TOKEN too long", func(t *testing.T) {
		// The RESP endpoint (--resp) bounds an argument before AUTH by
		// the token's length: a token of any length let a peer that
		// never authenticates make it buffer as much.
		t.Setenv(auth.EnvToken, strings.Repeat("s3", 1<<20))
		checkConfigCases(t, []configCase{
			{nil, "$TQ_TOKEN: the token is 2097152 bytes, longer than the 4096 a token may have"},
			{[]string{"--token", "s3cret"}, ""},
		})
	})
	_, _, err := parseServeConfig([]string{"--check-config", "--token", "s3cret\n"}, io.Discard)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "s3cret", "the token is not printed")
}

// $TQ_TOKEN set but empty (a Kubernetes Secret with an empty value) was
// taken as unset: a unit fell back to the data directory's token file,
// and on a read-only root filesystem failed creating the data directory,
// naming no token; a controller made a token of its own that no unit
// knew. It is refused, at start and by --check-config, naming $TQ_TOKEN;
// with --token (which wins) or --insecure (TQ_TOKEN= tq serve --insecure)
// it is taken, and unset the data directory's token file is used.
func TestAnEmptyTokenFromTheEnvironmentIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, "/dev/null/read-only")
	t.Setenv(auth.EnvToken, "")
	const want = "$TQ_TOKEN is set but empty"
	unit := []string{"--role", "unit", "--controller", "tcp://h:1"}
	checkConfigCases(t, []configCase{
		{unit, want},
		{nil, want},
		{append(unit, "--token", "s3cret"), ""},
		{[]string{"--insecure"}, ""},
	})
	err := serve(t.Context(), unit, io.Discard, io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), want, "at start")
	unsetEnv(t, auth.EnvToken)
	checkConfigCases(t, []configCase{{unit, ""}})
}

// --insecure with $TQ_TOKEN set served without a token, dropping the
// variable's with only a warning on stderr: a deployment that set it
// (a Kubernetes Secret) and kept --insecure from a test was open to
// anyone. It is refused, as --insecure with --token is, naming both and
// how to serve without a token; an empty $TQ_TOKEN is unset.
func TestInsecureWithATokenFromTheEnvironmentIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	t.Run("set", func(t *testing.T) {
		t.Setenv(auth.EnvToken, "s3cret")
		checkConfigCases(t, []configCase{
			{[]string{"--insecure"}, "--insecure and $TQ_TOKEN contradict each other"},
			{[]string{"--insecure"}, "unset $TQ_TOKEN (TQ_TOKEN= tq serve --insecure)"},
			{[]string{"--role", "unit", "--controller", "tcp://h:1", "--insecure"}, "--insecure and $TQ_TOKEN contradict each other"},
			{[]string{"--insecure", "--token", "t"}, "--insecure and --token contradict each other"},
			{nil, ""},
		})
	})
	t.Run("empty", func(t *testing.T) {
		t.Setenv(auth.EnvToken, "")
		checkConfigCases(t, []configCase{{[]string{"--insecure"}, ""}})
	})
}

// --check-config passed a malformed --restore NAME (a path, a name
// starting with '.'), which failed only at start. It is refused there
// too, naming --restore and the rule; whether the checkpoint exists is
// the host's data directory's to say, which --check-config does not read.
func TestCheckConfigRefusesAMalformedRestoreName(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	const rule = "use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
	checkConfigCases(t, []configCase{
		{[]string{"--restore", "../ck"}, `--restore: checkpoint name "../ck": ` + rule},
		{[]string{"--restore", "a/b"}, `--restore: checkpoint name "a/b"`},
		{[]string{"--restore", ".hidden"}, `--restore: checkpoint name ".hidden"`},
		{[]string{"--restore", "-ck"}, `--restore: checkpoint name "-ck"`},
		{[]string{"--restore", "ck 1"}, `--restore: checkpoint name "ck 1"`},
		{[]string{"--restore", strings.Repeat("c", 129)}, `--restore: checkpoint name "` + strings.Repeat("c", 129)},
		{[]string{"--restore", "step-1200_v2.final"}, ""}, // need not exist
		{[]string{"--restore", strings.Repeat("c", 128)}, ""},
		{[]string{"--restore", "_ck"}, ""},
	})
}

// A setting given as a flag wins over the same key in the --config file,
// which wins over the default (and, for the data directory, over
// $TQ_DATA_DIR, which only chooses the default), wherever --config stands
// among the flags; a key the flags leave alone keeps the file's value.
func TestServeConfigPrecedence(t *testing.T) {
	unsetEnv(t, auth.EnvToken)
	envDir := t.TempDir()
	t.Setenv(auth.EnvDataDir, envDir)
	dir := t.TempDir()
	fileDir, flagDir := filepath.Join(dir, "file-data"), filepath.Join(dir, "flag-data")
	file := filepath.Join(dir, "tq.yaml")
	require.NoError(t, os.WriteFile(file, []byte(strings.Join([]string{
		"units: 3",
		"capacity: 64MiB",
		"huge_pages: false",
		"sampler: rank-aware",
		"heartbeat_interval: 2s",
		"name: from-file",
		"data_dir: " + fileDir,
		"max_partitions: 7",
		"",
	}, "\n")), 0o600))

	def := defaultServeConfig()
	require.Equal(t, envDir, def.DataDir, "$TQ_DATA_DIR chooses the default data directory")

	fromFile, _, err := parseServeConfig([]string{"--config", file}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 3, fromFile.Units)
	assert.Equal(t, byteSize(64<<20), fromFile.Capacity)
	assert.False(t, fromFile.HugePages)
	assert.Equal(t, "rank-aware", fromFile.Sampler)
	assert.Equal(t, 2*time.Second, fromFile.HeartbeatInterval)
	assert.Equal(t, "from-file", fromFile.Name)
	assert.Equal(t, fileDir, fromFile.DataDir, "the file's data_dir wins over $TQ_DATA_DIR")
	assert.Equal(t, 7, fromFile.MaxPartitions)
	assert.Equal(t, def.Listen, fromFile.Listen, "a key the file leaves out keeps its default")

	flags := []string{"--units", "2", "--capacity", "128MiB", "--huge-pages=true", "--sampler", "sequential",
		"--heartbeat", "3s", "--name", "from-flag", "--data-dir", flagDir}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"--config first", append([]string{"--config", file}, flags...)},
		{"--config last", append(slices.Clone(flags), "--config", file)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := parseServeConfig(tc.args, io.Discard)
			require.NoError(t, err)
			// Flags equal to the defaults win too: given, they are meant.
			assert.Equal(t, 2, got.Units)
			assert.Equal(t, byteSize(128<<20), got.Capacity)
			assert.True(t, got.HugePages)
			assert.Equal(t, "sequential", got.Sampler)
			assert.Equal(t, 3*time.Second, got.HeartbeatInterval, "--heartbeat over the file's heartbeat_interval")
			assert.Equal(t, "from-flag", got.Name)
			assert.Equal(t, flagDir, got.DataDir)
			assert.Equal(t, 7, got.MaxPartitions, "a key no flag sets keeps the file's value")
		})
	}
}

// The controller's directory and the checkpoint directory sit in the
// private data directory, so no other user reaches them, unless one is a
// symbolic link out of it: then the directory it leads to must be as
// private as the data directory, or another user could replace the
// controller's log or plant the checkpoint a --restore loads. A link to
// a private directory (a bigger disk of this user's) is taken.
func TestSecureRefusesALinkOutOfTheDataDirToASharedDir(t *testing.T) {
	unsetEnv(t, auth.EnvToken)
	for _, sub := range []string{"controller", "checkpoints"} {
		t.Run(sub, func(t *testing.T) {
			c := defaultServeConfig()
			c.DataDir = filepath.Join(t.TempDir(), "data")
			c.SocketDir = filepath.Join(t.TempDir(), "sock")
			require.NoError(t, os.Mkdir(c.DataDir, 0o700))
			shared := filepath.Join(t.TempDir(), "shared")
			require.NoError(t, os.Mkdir(shared, 0o700))
			require.NoError(t, os.Chmod(shared, 0o777)) // past the umask
			link := filepath.Join(c.DataDir, sub)
			require.NoError(t, os.Symlink(shared, link))

			err := c.secure()
			require.Error(t, err, "a link to a directory every user may write to is taken")
			assert.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), link)
			assert.Contains(t, err.Error(), shared)
			assert.Contains(t, err.Error(), "chmod 700")

			require.NoError(t, os.Chmod(shared, 0o700))
			require.NoError(t, c.secure(), "a link to a private directory")
		})
	}
	t.Run("a directory inside the data directory is private whatever its mode", func(t *testing.T) {
		c := defaultServeConfig()
		c.DataDir = filepath.Join(t.TempDir(), "data")
		c.SocketDir = filepath.Join(t.TempDir(), "sock")
		require.NoError(t, os.Mkdir(c.DataDir, 0o700))
		require.NoError(t, os.Mkdir(c.checkpointDir(), 0o700))
		require.NoError(t, os.Chmod(c.checkpointDir(), 0o775)) // a umask of 002
		require.NoError(t, c.secure())
	})
}

// tq serve names the flag of a --role or --sampler it refuses (and of a
// --config it cannot read), as it names every other: these said `role
// "x"`, `sampler "x"` and `open tq.yaml: no such file or directory`, the
// last naming no flag at all.
func TestServeNamesTheFlagOfARoleSamplerOrConfigItRefuses(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	dir := t.TempDir()
	roleFile := filepath.Join(dir, "role.yaml")
	require.NoError(t, os.WriteFile(roleFile, []byte("role: worker\n"), 0o600))
	missing := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"--role", []string{"--role", "worker"}, `--role "worker": want all, controller or unit`},
		{"role in a config file", []string{"--config", roleFile}, `--role "worker": want all, controller or unit`},
		{"--sampler", []string{"--sampler", "random"}, `--sampler: sampler "random": want sequential`},
		{"--sampler with a bad parameter", []string{"--sampler", "grpo:0"}, `--sampler: sampler "grpo:0": parameter "0"`},
		{"a --config that is not there", []string{"--config", missing}, "--config " + missing + ": open: no such file or directory"},
		{"a --config that is a directory", []string{"--config", dir}, "--config " + dir + ": read: is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := serve(t.Context(), append([]string{"--check-config"}, tc.args...), io.Discard, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// `tq serve --check-config` prints the durations the process uses: those
// whose zero means "the default" (--kept-batch-ttl, --reconcile-interval,
// --shm-quarantine, ...) used to be printed as 0s, which reads as zero.
// A value given prints as given, and the printed file, fed back with
// --config, gives the same configuration (and prints the same again).
func TestCheckConfigPrintsTheDefaultDurations(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	unsetEnv(t, auth.EnvToken)
	dir := t.TempDir()
	checkConfig := func(args ...string) string {
		var out, errOut strings.Builder
		require.NoError(t, serve(t.Context(), append([]string{"--check-config"}, args...), &out, &errOut), errOut.String())
		return out.String()
	}
	out := checkConfig()
	for key, d := range map[string]time.Duration{
		"kept_batch_ttl":     controller.DefaultKeptBatchTTL,
		"held_fetch_ttl":     controller.DefaultHeldFetchTTL,
		"held_client_grace":  controller.DefaultHeldClientGrace,
		"peer_timeout":       wire.DefaultPeerTimeout,
		"reconcile_interval": storage.DefaultReconcileInterval,
		"reconcile_grace":    storage.DefaultReconcileGrace,
		"reserve_wait":       storage.DefaultReserveWait,
		"shm_quarantine":     storage.DefaultQuarantine,
	} {
		assert.Contains(t, out, "\n"+key+": "+d.String()+"\n")
	}
	assert.NotRegexp(t, `(?m)^[a-z_]+: 0s$`, out, "a duration printed as 0s")

	given := []string{"--kept-batch-ttl", "3m", "--held-fetch-ttl", "-1s", "--held-client-grace", "5s", "--reconcile-interval", "2s", "--reconcile-grace", "90s", "--reserve-wait", "1500ms", "--shm-quarantine", "-1s"}
	outGiven := checkConfig(given...)
	for _, line := range []string{"kept_batch_ttl: 3m0s", "held_fetch_ttl: -1s", "held_client_grace: 5s", "reconcile_interval: 2s", "reconcile_grace: 1m30s", "reserve_wait: 1.5s", "shm_quarantine: -1s"} {
		assert.Contains(t, outGiven, "\n"+line+"\n")
	}

	for i, tc := range []struct {
		out  string
		args []string
	}{{out, nil}, {outGiven, given}} {
		file := filepath.Join(dir, fmt.Sprintf("back%d.yaml", i))
		require.NoError(t, os.WriteFile(file, []byte(tc.out), 0o600))
		assert.Equal(t, tc.out, checkConfig("--config", file), "the printed configuration prints the same read back")
		want, _, err := parseServeConfig(append([]string{"--check-config"}, tc.args...), io.Discard)
		require.NoError(t, err)
		got, _, err := parseServeConfig([]string{"--check-config", "--config", file}, io.Discard)
		require.NoError(t, err)
		assert.Equal(t, want, got, "the printed configuration reads back as the same")
	}
}

// A --sampler tq serve does not know is refused listing the spellings
// -h and the README use (rank-aware, seqlen, token-budget); it used to
// list rank_aware, seqlen_balanced and token_budget, which are taken
// too, and still are.
func TestSamplerErrorListsTheSpellingsOfTheHelp(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	for _, tc := range []struct{ spec, want string }{
		{"random", `--sampler: sampler "random": want sequential, rank-aware, grpo:N, seqlen:N:DP or token-budget:N:DP`},
		{"seqlen:4", `--sampler: sampler "seqlen:4": seqlen takes 2 parameters (seqlen:N:DP), got 1`},
		{"rank-aware:2", `--sampler: sampler "rank-aware:2": rank-aware takes no parameter, got 1`},
	} {
		err := serve(t.Context(), []string{"--check-config", "--sampler", tc.spec}, io.Discard, io.Discard)
		require.Error(t, err, tc.spec)
		assert.Contains(t, err.Error(), tc.want)
		assert.NotRegexp(t, `rank_aware|seqlen_balanced|token_budget`, err.Error())
	}
	for _, spec := range []string{"rank-aware", "rank_aware", "seqlen:4:2", "seqlen_balanced:4:2", "seqlen-balanced:4:2", "token-budget:4:2", "token_budget:4:2", "grpo:4"} {
		require.NoError(t, serve(t.Context(), []string{"--check-config", "--sampler", spec}, io.Discard, io.Discard), spec)
	}
}
