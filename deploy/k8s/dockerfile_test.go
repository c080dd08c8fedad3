package k8s

// The image the manifests run (deploy/Dockerfile), read as text: no
// container runtime builds it here.

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dockerInstructions returns the Dockerfile's instructions, continuation
// lines joined and comments dropped, each as its keyword (upper case) and
// the rest.
func dockerInstructions(t *testing.T, file string) [][2]string {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var out [][2]string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		kw, rest, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, [2]string{strings.ToUpper(kw), strings.TrimSpace(rest)})
		cur.Reset()
	}
	return out
}

// The final stage runs as a user other than root: a pod that sets no
// runAsUser, or a plain docker run, must not get uid 0. (The storage
// units and the clients that share their sockets ask for uid 0 in their
// manifests, on purpose: see README.)
func TestDockerfileUser(t *testing.T) {
	var user string
	for _, in := range dockerInstructions(t, "../Dockerfile") {
		switch in[0] {
		case "FROM":
			user = "" // a new stage starts as its base image's user: root here
		case "USER":
			user = in[1]
		}
	}
	name, _, _ := strings.Cut(user, ":")
	if name == "" || name == "root" || name == "0" {
		t.Errorf("deploy/Dockerfile: the final stage runs as root (USER %q): want an unprivileged user", user)
	}
}

// The build keeps the RDMA transport (the rdma overlay's --rdma-device),
// which needs cgo: never CGO_ENABLED=0.
func TestDockerfileBuildsRDMA(t *testing.T) {
	tags := regexp.MustCompile(`-tags[= ]+'?"?([a-z0-9_, ]+)`)
	var built bool
	for _, in := range dockerInstructions(t, "../Dockerfile") {
		if in[0] == "ENV" && strings.Contains(in[1], "CGO_ENABLED=0") {
			t.Errorf("deploy/Dockerfile: ENV %s: the RDMA transport needs cgo", in[1])
		}
		if in[0] != "RUN" || !strings.Contains(in[1], "go build") {
			continue
		}
		if strings.Contains(in[1], "CGO_ENABLED=0") {
			t.Errorf("deploy/Dockerfile: %s: the RDMA transport needs cgo", in[1])
		}
		m := tags.FindStringSubmatch(in[1])
		if m == nil || !strings.Contains(" "+strings.ReplaceAll(m[1], ",", " ")+" ", " rdma ") {
			t.Errorf("deploy/Dockerfile: %s: without -tags rdma tq has no RDMA transport, which the rdma overlay's units use", in[1])
		}
		built = true
	}
	require.True(t, built, "deploy/Dockerfile has no RUN go build")
}
