package storage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire"
)

// sealChildEnv names the directory a child process of TestSegmentSealed
// serves its unit in.
const sealChildEnv = "TQ_TEST_SEAL_CHILD"

// TestSegmentSealed: a client on the unit's host that was handed a
// segment's memfd cannot resize it, and the unit goes on serving. The
// unit runs in a child process (this test binary run again), so that an
// unsealed segment's SIGBUS kills the child, not the test.
func TestSegmentSealed(t *testing.T) {
	if dir := os.Getenv(sealChildEnv); dir != "" {
		os.Exit(sealChild(dir))
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSegmentSealed$", "-test.count=1")
	cmd.Env = append(os.Environ(), sealChildEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	var a engine.RemoteAddr
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "ready %d %d %d %d", &a.Segment, &a.Gen, &a.Offset, &a.Len); err == nil {
			break
		}
	}
	if a.Len == 0 {
		cmd.Wait()
		exited = true
		t.Fatalf("child never got ready; its stderr:\n%s", head(stderr.String()))
	}
	go io.Copy(io.Discard, stdout)

	fd, size := fetchSegmentFd(t, filepath.Join(dir, "unit.sock.shm"), a.Segment)
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 2*size); !errors.Is(err, unix.EPERM) {
		t.Errorf("ftruncate(segment, %d): got %v, want %v", 2*size, err, unix.EPERM)
	}
	if err := unix.Ftruncate(fd, 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("ftruncate(segment, 0): got %v, want %v", err, unix.EPERM)
	}
	c := dialUnit(t, "unix://"+filepath.Join(dir, "unit.sock"), "")
	got, err := remoteRead(t.Context(), c, a)
	if err != nil {
		t.Errorf("READ after the truncation attempt: %v", err)
	} else if !bytes.Equal(got[0], pattern(1, int(a.Len))) {
		t.Errorf("READ after the truncation attempt returned other bytes")
	}
	c.Close()

	// The child reads its extent in place (in user space, where a
	// truncated page faults) and exits.
	stdin.Close()
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Fatalf("unit process: %v; its stderr:\n%s", err, head(stderr.String()))
	}
}

// head returns the first lines of a child's stderr.
func head(s string) string {
	if lines := strings.SplitN(s, "\n", 16); len(lines) == 16 {
		return strings.Join(lines[:15], "\n") + "\n…"
	}
	return s
}

// TestSegmentSeals: every segment's memfd carries the seals, hugetlb
// segments included (or the 4 KiB fallback when no huge pages are
// reserved).
func TestSegmentSeals(t *testing.T) {
	for _, huge := range []bool{false, true} {
		t.Run(fmt.Sprintf("huge=%v", huge), func(t *testing.T) {
			cfg := testConfig()
			cfg.HugePages = huge
			u := newTestUnit(t, cfg)
			put(t, u, pattern(1, 3<<20))
			want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
			for _, s := range u.Segments() {
				seals, err := unix.FcntlInt(uintptr(s.Fd), unix.F_GET_SEALS, 0)
				if err != nil || seals&want != want {
					t.Errorf("segment %d (hugetlb %v): seals %#x, %v; want %#x", s.ID, s.HugePages, seals, err, want)
				}
			}
		})
	}
}

// fetchSegmentFd asks a unit's fd socket for segment id exactly as
// transport/shm does, and returns the memfd and its size.
func fetchSegmentFd(t *testing.T, path string, id uint32) (int, int64) {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	uc := nc.(*net.UnixConn)
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Write(wire.FdRequest{Segment: id}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.FdReplySize)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := wire.ParseFdReply(buf[:n])
	if err == nil {
		err = rep.Status.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fd reply: %d control messages, %v", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("fd reply: %d fds, %v", len(fds), err)
	}
	return fds[0], int64(rep.Size)
}

// sealChild serves a unit holding one extent on dir/unit.sock and its fd
// socket on dir/unit.sock.shm, prints the extent's address, and once
// stdin closes reads the extent in place and returns the exit status.
func sealChild(dir string) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "unit process:", err)
		return 3
	}
	u, err := NewUnit(1, testConfig())
	if err != nil {
		return fail(err)
	}
	defer u.Close()
	srv := NewServer(u, ServerConfig{})
	defer srv.Close()
	l, err := net.Listen("unix", filepath.Join(dir, "unit.sock"))
	if err != nil {
		return fail(err)
	}
	go srv.Serve(l)
	fl, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "unit.sock.shm"), Net: "unix"})
	if err != nil {
		return fail(err)
	}
	srv.RegisterShm(fl)
	go srv.ServeShm(fl)

	want := pattern(1, 100<<10)
	r, err := u.Reserve(context.Background(), []int64{int64(len(want))})
	if err != nil {
		return fail(err)
	}
	copy(r.Buf(0), want)
	a := r.Addr(0)
	if err := r.Commit(); err != nil {
		return fail(err)
	}
	fmt.Printf("ready %d %d %d %d\n", a.Segment, a.Gen, a.Offset, a.Len)

	io.Copy(io.Discard, os.Stdin)
	lease, err := u.Acquire([]engine.RemoteAddr{a})
	if err != nil {
		return fail(err)
	}
	defer lease.Release()
	if !bytes.Equal(lease.Bytes(0), want) {
		return fail(errors.New("the extent's bytes changed"))
	}
	return 0
}
