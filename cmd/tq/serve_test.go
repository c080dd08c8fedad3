package main

// Tests of `tq serve`'s own life cycle with real processes: what a start
// does with the state it finds, and what SIGTERM lets finish.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/internal/auth"
	"github.com/tqgo/tq/kvapi"
	"github.com/tqgo/tq/wire"
	"github.com/tqgo/tq/wire/wirepb"
)

// startServeLogged is startServeIn that also collects what the process
// prints on stdout, the lines before "ready" included.
func startServeLogged(t *testing.T, dataDir, bin string, args ...string) (*serveProc, *syncBuffer) {
	t.Helper()
	var lines syncBuffer
	p, err := spawnServe(dataDir, nil, os.Stderr, func(l string) {
		t.Logf("serve: %s", l)
		lines.Write([]byte(l + "\n"))
	}, bin, args...)
	require.NoError(t, err)
	t.Cleanup(p.kill)
	return p, &lines
}

// TestRestoreOnlyIntoAnEmptyController: --restore stays in a controller's
// flags (a config file, a Kubernetes args list), so every restart sees it.
// A controller that recovers partitions from its data directory skips it,
// saying why: keys put and acknowledged after the checkpoint survive the
// restart, as do their bytes (before, they were gone and their cells
// freed). --restore-force loads the checkpoint all the same.
func TestRestoreOnlyIntoAnEmptyController(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	ctrlArgs := []string{"--role", "controller", "--listen", "", "--socket-dir", socks, "--heartbeat", "100ms"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	addr := ctrl.addr("unix")
	startServeIn(t, data, nil, bin, "--role", "unit", "--controller", addr, "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB")
	kv := kvapi.New(connectTo(t, ctrl, addr))
	putInt(t, kv, "p", "before", 1)
	out, err := runTQ(t, ctrl, bin, "checkpoint", "save", addr, "c0")
	require.NoError(t, err, out)
	assert.Regexp(t, `saved c0 in \S+: 1 cells, \S+ B\n`, out, "what the checkpoint holds, and no cells lost")
	putInt(t, kv, "p", "after", 2)
	ctrl.stop(t)

	// A restart with --restore still given: the state stands.
	ctrl, lines := startServeLogged(t, data, bin, append(ctrlArgs, "--restore", "c0")...)
	assert.Contains(t, lines.String(), "tq serve: not restoring checkpoint c0: the controller's state in ")
	assert.NotContains(t, lines.String(), "restored checkpoint")
	kv = kvapi.New(connectTo(t, ctrl, addr))
	for key, want := range map[string]int64{"before": 1, "after": 2} {
		v, err := getInt(t, kv, "p", key)
		require.NoError(t, err, "p/%s after a restart with --restore c0", key)
		assert.Equal(t, []int64{want}, v, "p/%s", key)
	}
	ctrl.stop(t)

	// --restore-force: the checkpoint replaces the state.
	ctrl, lines = startServeLogged(t, data, bin, append(ctrlArgs, "--restore", "c0", "--restore-force")...)
	assert.Contains(t, lines.String(), "tq serve: restored checkpoint c0")
	kv = kvapi.New(connectTo(t, ctrl, addr))
	v, err := getInt(t, kv, "p", "before")
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, v)
	_, err = getInt(t, kv, "p", "after")
	require.ErrorIs(t, err, engine.ErrNotFound, "p/after was put after the checkpoint")
}

// TestRestoreForceNeedsRestore: --restore-force alone is a mistake, said
// at once.
func TestRestoreForceNeedsRestore(t *testing.T) {
	_, _, err := parseServeConfig([]string{"--restore-force"}, &strings.Builder{})
	require.ErrorContains(t, err, "--restore-force needs --restore")
}

// TestSIGTERMLetsACheckpointSaveFinish: SIGTERM lets the requests in
// flight finish within --shutdown-timeout, a checkpoint save included,
// which reads every cell from the storage units: they stop after the
// controller. Before, SIGTERM shut the units down first, and the save
// failed to reach them.
func TestSIGTERMLetsACheckpointSaveFinish(t *testing.T) {
	bin := tqBinary(t)
	data := t.TempDir()
	p := startServeIn(t, data, nil, bin, "--listen", "", "--socket-dir", t.TempDir(), "--units", "2", "--capacity", "160MiB", "--shutdown-timeout", "2m")
	addr := p.addr("unix")
	c := connectTo(t, p, addr)
	kv := kvapi.New(c)
	// 256 MiB of cells, on both units: the save takes a while to read
	// and write them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	val := make([]byte, 4<<20)
	for i := range val {
		val[i] = byte(i * 7)
	}
	for i := range 64 {
		_, err := kv.BatchPut(ctx, "p", []string{fmt.Sprint("k", i)}, engine.MustBatch(engine.Field{Name: "v", Col: engine.BytesOf([][]byte{val})}), nil)
		require.NoError(t, err)
	}
	c.Close()

	var out syncBuffer
	save := exec.Command(bin, "checkpoint", "save", addr, "c1")
	save.Env = append(os.Environ(), p.env()...)
	save.Stdout, save.Stderr = &out, &out
	require.NoError(t, save.Start())
	// SIGTERM once the save has made its temporary directory: it has the
	// cells still to read.
	ckpts := filepath.Join(data, "checkpoints")
	inFlight := func() bool {
		entries, _ := os.ReadDir(ckpts)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".c1.tmp-") {
				return true
			}
		}
		return false
	}
	require.Eventually(t, inFlight, 30*time.Second, time.Millisecond, "the save never began")
	p.stop(t)
	require.NoError(t, save.Wait(), "tq checkpoint save, in flight at SIGTERM:\n%s", out.String())
	assert.Contains(t, out.String(), "saved c1")
	_, err := os.Stat(filepath.Join(ckpts, "c1", "data.bin"))
	require.NoError(t, err)
}

// TestServeKeepsAFileWhereASocketGoes: --resp-socket or --socket naming
// a file that is not a socket (a typo, a path reused) stops tq serve,
// which says so, and the file stays. Before, any path a dial failed on
// was removed as a stale socket: the file was deleted.
func TestServeKeepsAFileWhereASocketGoes(t *testing.T) {
	bin := tqBinary(t)
	for _, flag := range []string{"--resp-socket", "--socket"} {
		t.Run(flag, func(t *testing.T) {
			precious := filepath.Join(t.TempDir(), "precious.txt")
			require.NoError(t, os.WriteFile(precious, []byte("precious data\n"), 0o600))
			cmd := exec.Command(bin, "serve", "--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB", flag, precious)
			cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+t.TempDir())
			out, err := runFor(cmd, 20*time.Second)
			require.Error(t, err, "tq serve %s %s started:\n%s", flag, precious, out)
			assert.Contains(t, string(out), precious+" exists and is not a socket")
			b, err := os.ReadFile(precious)
			require.NoError(t, err, "the file is gone")
			assert.Equal(t, "precious data\n", string(b))
		})
	}
}

// TestRemoveStaleSocket: only a socket nobody listens on is removed; a
// live one is left for Listen to refuse, and what is not a socket is an
// error, left as it was.
func TestRemoveStaleSocket(t *testing.T) {
	unixSocket := func(t *testing.T, path string, live bool) {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		if !live {
			l.SetUnlinkOnClose(false)
			l.Close()
			return
		}
		t.Cleanup(func() { l.Close() })
	}
	for _, tc := range []struct {
		name    string
		make    func(t *testing.T, path string)
		wantErr string // "" for none
		removed bool
	}{
		{"nothing there", func(*testing.T, string) {}, "", true},
		{"stale socket", func(t *testing.T, path string) { unixSocket(t, path, false) }, "", true},
		{"live socket", func(t *testing.T, path string) { unixSocket(t, path, true) }, "", false},
		{"regular file", func(t *testing.T, path string) { require.NoError(t, os.WriteFile(path, []byte("x"), 0o600)) }, "exists and is not a socket", false},
		{"directory", func(t *testing.T, path string) { require.NoError(t, os.Mkdir(path, 0o700)) }, "exists and is not a socket", false},
		{"link to a stale socket", func(t *testing.T, path string) {
			unixSocket(t, path+".target", false)
			require.NoError(t, os.Symlink(path+".target", path))
		}, "exists and is not a socket", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			tc.make(t, path)
			err := removeStaleSocket(path)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, path+" "+tc.wantErr)
			} else {
				require.NoError(t, err)
			}
			_, err = os.Lstat(path)
			assert.Equal(t, tc.removed, os.IsNotExist(err), "removed: got %v, want %v", os.IsNotExist(err), tc.removed)
		})
	}
}

// TestSecondSIGTERMEndsServeAtOnce: while SIGTERM's graceful shutdown
// waits (here for a RESP SET whose value is still on its way, which it
// lets finish), a second SIGTERM, or Ctrl-C, ends the process at once, as
// users expect. Before, tq serve kept catching signals until it exited:
// the second was swallowed.
func TestSecondSIGTERMEndsServeAtOnce(t *testing.T) {
	bin := tqBinary(t)
	p, lines := startServeLogged(t, t.TempDir(), bin, "--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB",
		"--resp", "127.0.0.1:0", "--resp-loops", "-1", "--shutdown-timeout", "2m")
	nc, err := net.Dial("tcp", p.resp)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(nc)
	tok := p.token(t)
	_, err = fmt.Fprintf(nc, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(tok), tok)
	require.NoError(t, err)
	l, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "+OK\r\n", l)
	// The PONG is written once the server waits for more input: it has
	// begun to read the SET.
	_, err = fmt.Fprintf(nc, "*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n0123456789", 1<<20)
	require.NoError(t, err)
	l, err = r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "+PONG\r\n", l)

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool { return strings.Contains(lines.String(), "tq serve: shutting down") }, 20*time.Second, 10*time.Millisecond)
	// Again, until it ends (the first may come before tq serve stops
	// catching them).
	deadline := time.After(10 * time.Second)
	for {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			p.done <- err
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee)
			ws := ee.Sys().(syscall.WaitStatus)
			require.True(t, ws.Signaled(), "tq serve exited with %v; want killed by the second SIGTERM", err)
			assert.Equal(t, syscall.SIGTERM, ws.Signal())
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("tq serve still running 10 s after a second SIGTERM")
		}
	}
}

// --shm-quarantine reaches the storage units: a same-host session that
// ends without a goodbye, holding a reservation while its client (this
// process) lives, leaves it in quarantine under --shm-quarantine 1h, and
// gives it back at once under -1s (none). tq serve used to give its units
// no quarantine but the default.
func TestShmQuarantineReachesTheUnits(t *testing.T) {
	bin := tqBinary(t)
	for _, tc := range []struct {
		quarantine string
		want       int64 // bytes in quarantine once the session ended
	}{{"1h", 64 << 10}, {"-1s", 0}} {
		t.Run("quarantine="+tc.quarantine, func(t *testing.T) {
			p := startServe(t, nil, bin, "--listen", "127.0.0.1:0", "--socket-dir", t.TempDir(), "--units", "1",
				"--capacity", "16MiB", "--shm-quarantine", tc.quarantine)
			var sock string
			for _, a := range p.units[0] {
				if strings.HasPrefix(a, "unix://") {
					sock = a
				}
			}
			require.NotEmpty(t, sock, "the unit's unix socket among %q", p.units[0])
			ctx := t.Context()
			dial := func() *wire.Conn {
				c, _, err := wire.Dial(ctx, sock, &wirepb.Hello{Role: "client", Token: p.token(t)}, wire.ConnConfig{})
				require.NoError(t, err)
				return c
			}
			c := dial()
			require.NoError(t, c.Do(ctx, wire.OpReserve, &wirepb.ReserveRequest{Sizes: []uint64{64 << 10}}, nil, &wirepb.ReserveReply{}, nil))
			c.Close() // no goodbye

			sc := dial()
			defer sc.Close()
			var st wirepb.UnitStats
			require.Eventually(t, func() bool {
				st.Reset()
				require.NoError(t, sc.Do(ctx, wire.OpUnitStats, &wirepb.Empty{}, nil, &st, nil))
				// The session ended: its reservation went to
				// quarantine, or back.
				return st.Quarantined != 0 || st.OpenReservations == 0
			}, 10*time.Second, 5*time.Millisecond, "the session's end")
			assert.Equal(t, tc.want, st.Quarantined, "bytes in quarantine: %v", &st)
		})
	}
}

// TestRestoreHoldsClientsBack: a controller started with --restore
// serves its endpoint at once, for the units that must take the
// checkpoint's cells, and loads the checkpoint once one is alive. A
// client's change in between was acknowledged, then replaced by the load
// (its key gone, its cells freed). Until the restore is done the
// controller now refuses clients, saying why; units register, and the
// clients that come after find the checkpoint.
func TestRestoreHoldsClientsBack(t *testing.T) {
	bin := tqBinary(t)
	data, socks := t.TempDir(), t.TempDir()
	ctrlArgs := []string{"--role", "controller", "--listen", "", "--socket-dir", socks, "--heartbeat", "100ms"}
	ctrl := startServeIn(t, data, nil, bin, ctrlArgs...)
	addr := ctrl.addr("unix")
	unit := startServeIn(t, data, nil, bin, "--role", "unit", "--controller", addr, "--unit-listen", "", "--socket-dir", socks, "--capacity", "16MiB")
	putInt(t, kvapi.New(connectTo(t, ctrl, addr)), "p", "before", 1)
	out, err := runTQ(t, ctrl, bin, "checkpoint", "save", addr, "c0")
	require.NoError(t, err, out)
	unit.stop(t)
	ctrl.stop(t)

	// A fresh controller restores c0; it waits for a unit to be alive.
	fresh, socks2 := t.TempDir(), t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(fresh, "checkpoints", "c0"), os.DirFS(filepath.Join(data, "checkpoints", "c0"))))
	cmd := exec.Command(bin, "serve", "--role", "controller", "--listen", "", "--socket-dir", socks2, "--heartbeat", "100ms", "--restore", "c0")
	cmd.Env = append(os.Environ(), auth.EnvDataDir+"="+fresh)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			t.Logf("serve: %s", sc.Text())
			lines <- sc.Text()
		}
		close(lines)
	}()
	var addr2 string
	for addr2 == "" {
		l, ok := <-lines
		require.True(t, ok, "tq serve exited")
		if rest, ok := strings.CutPrefix(l, "tq serve: controller on "); ok {
			addr2 = strings.Fields(rest)[0]
		}
	}
	tok, err := os.ReadFile(filepath.Join(fresh, auth.TokenFile))
	require.NoError(t, err)
	token := strings.TrimSpace(string(tok))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _, err = wire.Dial(ctx, addr2, &wirepb.Hello{Role: "client", Token: token}, wire.ConnConfig{})
	require.ErrorIs(t, err, engine.ErrNotReady, "a client while the checkpoint is not in")
	require.ErrorContains(t, err, "restoring checkpoint c0")

	// A unit comes up; the restore goes on, then clients are let in.
	startServeIn(t, fresh, nil, bin, "--role", "unit", "--controller", addr2, "--unit-listen", "", "--socket-dir", socks2, "--capacity", "16MiB")
	for l := range lines {
		if l == "tq serve: ready" {
			break
		}
	}
	wc, _, err := wire.Dial(ctx, addr2, &wirepb.Hello{Role: "client", Token: token}, wire.ConnConfig{})
	require.NoError(t, err)
	defer wc.Close()
	var keys wirepb.ListKeysReply
	require.NoError(t, wc.Do(ctx, wire.OpListKeys, &wirepb.ListKeysRequest{Partition: "p"}, nil, &keys, nil))
	require.Len(t, keys.Partitions, 1)
	require.Len(t, keys.Partitions[0].Keys, 1)
	assert.Equal(t, "before", keys.Partitions[0].Keys[0].Key, "the checkpoint's key")
}

// TestCheckpointMetadata: a checkpoint keeps the JSON object saved with
// it (TransferQueue's save_checkpoint(metadata=)); list and load show it.
// It used to have no room for one.
func TestCheckpointMetadata(t *testing.T) {
	bin := tqBinary(t)
	p := startServeIn(t, t.TempDir(), nil, bin, "--listen", "", "--socket-dir", t.TempDir(), "--units", "1", "--capacity", "16MiB")
	addr := p.addr("unix")
	out, err := runTQ(t, p, bin, "checkpoint", "save", addr, "ck", "--metadata", "{\"step\": 1200,\n \"run\": \"a\"}")
	require.NoError(t, err, out)
	out, err = runTQ(t, p, bin, "checkpoint", "list", addr)
	require.NoError(t, err, out)
	assert.Contains(t, out, `{"step":1200,"run":"a"}`)
	out, err = runTQ(t, p, bin, "checkpoint", "load", addr, "ck")
	require.NoError(t, err, out)
	assert.Contains(t, out, `tq checkpoint: its metadata: {"step":1200,"run":"a"}`)

	out, err = runTQ(t, p, bin, "checkpoint", "save", addr, "ck", "--metadata", "[1, 2]")
	require.Error(t, err)
	assert.Contains(t, out, "checkpoint metadata is not a JSON object")
	out, err = runTQ(t, p, bin, "checkpoint", "load", addr, "ck", "--metadata", "{}")
	require.Error(t, err)
	assert.Contains(t, out, "--metadata is for save")
}

// A --capacity past this host's memory (1 PiB here, a typo for GiB or a
// config file meant for a larger host) started: a unit maps its arena
// as data comes, so it registered that capacity, and once the data
// outgrew memory it was killed (out of memory). tq serve now refuses it
// at start, before it listens or makes anything, naming the flag, the
// value and the host's memory; --units counts, as every unit of the
// process maps its own arena. --check-config, which checks a
// configuration meant for any host, still takes it.
func TestCapacityPastThisHostsMemoryIsRefused(t *testing.T) {
	t.Setenv(auth.EnvDataDir, t.TempDir())
	all := []string{"--insecure", "--in-memory", "--listen", "127.0.0.1:0"}
	unit := []string{"--insecure", "--role", "unit", "--controller", "tcp://127.0.0.1:1", "--controller-wait", "0s"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(all, "--units", "1", "--capacity", "1048576GiB"), "--capacity 1048576 GiB: more than this host's memory ("},
		{append(all, "--units", "2", "--capacity", "1048576GiB"), "--capacity 1048576 GiB with --units 2: 2 storage units of that capacity are more than this host's memory ("},
		{append(unit, "--capacity", "1048576GiB"), "--capacity 1048576 GiB: more than this host's memory ("},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			sockDir := t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			var out strings.Builder
			err := serve(ctx, append(tc.args, "--socket-dir", sockDir), &out, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, out.String(), "tq serve: controller on", "refused before anything started")
			entries, _ := os.ReadDir(sockDir)
			assert.Empty(t, entries, "refused before anything started")
		})
	}
	_, _, err := parseServeConfig([]string{"--check-config", "--capacity", "1048576GiB"}, io.Discard)
	assert.NoError(t, err, "--check-config checks a configuration for any host")
}

// An address tq serve cannot bind (a port another holds, a host not of
// this machine) is refused naming the flag and its value, before the
// controller's state is made: it used to say only "controller: listen
// tcp ADDR: bind: address already in use" (or "storage unit 1: ..."),
// once the controller had opened its log in the data directory (and,
// for --resp, once the units had registered). A second start on free
// addresses then comes up.
func TestServeNamesTheFlagOfAnAddressItCannotBind(t *testing.T) {
	unsetEnv(t, auth.EnvToken)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	taken := held.Addr().String()
	dataDir := t.TempDir()
	// A case's flag replaces base's (tq serve refuses a flag given twice).
	base := []string{"--data-dir=" + dataDir, "--units=1", "--capacity=16MiB", "--huge-pages=false", "--listen=127.0.0.1:0"}
	for _, tc := range []struct{ flag, addr, want string }{
		{"--listen", taken, "address already in use"},
		{"--unit-listen", taken, "address already in use"},
		{"--resp", taken, "address already in use"},
		{"--metrics", taken, "address already in use"},
		{"--pprof", taken, "address already in use"},
		{"--listen", "192.0.2.1:0", "cannot assign requested address"}, // TEST-NET-1: no host's
	} {
		t.Run(tc.flag+" "+tc.addr, func(t *testing.T) {
			var out strings.Builder
			err := serve(t.Context(), serveArgs(base, "--socket-dir", t.TempDir(), tc.flag, tc.addr), &out, io.Discard)
			require.Error(t, err)
			assert.Contains(t, err.Error(), fmt.Sprintf("%s %q: ", tc.flag, tc.addr))
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, out.String(), "controller state in", "refused before the controller's state was made")
			_, err = os.Stat(filepath.Join(dataDir, "controller"))
			assert.True(t, os.IsNotExist(err), "the controller's directory was made: %v", err)
		})
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- serve(ctx, serveArgs(base, "--socket-dir", t.TempDir()), &out, io.Discard) }()
	require.Eventually(t, func() bool {
		select {
		case err := <-done:
			require.NoError(t, err, out.String())
			t.Fatalf("tq serve ended:\n%s", out.String())
		default:
		}
		return strings.Contains(out.String(), "tq serve: ready")
	}, 30*time.Second, 10*time.Millisecond, "a second start on free addresses")
	assert.Contains(t, out.String(), ", start 1,", "the first start of this data directory")
	cancel()
	require.NoError(t, <-done)
}
