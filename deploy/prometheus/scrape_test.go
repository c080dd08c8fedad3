package prometheus

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// job is what the test reads of tq-scrape.yaml.
type job struct {
	JobName       string `json:"job_name"`
	Authorization struct {
		Type            string `json:"type"`
		CredentialsFile string `json:"credentials_file"`
	} `json:"authorization"`
	SD []struct {
		Role       string `json:"role"`
		Namespaces struct {
			Names []string `json:"names"`
		} `json:"namespaces"`
	} `json:"kubernetes_sd_configs"`
	Relabel []struct {
		SourceLabels []string `json:"source_labels"`
		Regex        string   `json:"regex"`
		Action       string   `json:"action"`
	} `json:"relabel_configs"`
}

func readJob(t *testing.T) (raw []byte, j job) {
	t.Helper()
	raw, err := os.ReadFile("tq-scrape.yaml")
	require.NoError(t, err)
	var jobs []job
	require.NoError(t, yaml.Unmarshal(raw, &jobs)) // promtool checks it strictly
	require.Len(t, jobs, 1)
	return raw, jobs[0]
}

// promtool (Debian's prometheus package) accepts the job in a
// prometheus.yml, with its credentials file in place. Debian builds
// Prometheus without Kubernetes discovery, so promtool checks the job
// with its kubernetes_sd_configs swapped for a static target; what the
// discovery selects is TestJobSelectsTheManifestsPods's.
func TestPromtoolAcceptsTheJob(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool is not installed (apt-get install prometheus): %v", err)
	}
	raw, _ := readJob(t)
	var jobs []map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &jobs))
	dir := t.TempDir()
	cred := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(cred, []byte("0123456789abcdef\n"), 0o600))
	jobs[0]["authorization"].(map[string]any)["credentials_file"] = cred
	delete(jobs[0], "kubernetes_sd_configs")
	jobs[0]["static_configs"] = []any{map[string]any{"targets": []any{"127.0.0.1:9090"}}}
	cfg, err := yaml.Marshal(map[string]any{"scrape_configs": jobs})
	require.NoError(t, err)
	path := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(path, cfg, 0o600))
	out, err := exec.Command(promtool, "check", "config", path).CombinedOutput()
	require.NoError(t, err, "promtool check config:\n%s\n%s", out, cfg)
}

// The job keeps the pods of deploy/k8s/base, in their namespace, on the
// container port their tq serve --metrics listens on, and asks a bearer
// token.
func TestJobSelectsTheManifestsPods(t *testing.T) {
	_, j := readJob(t)
	require.Len(t, j.SD, 1)
	assert.Equal(t, "pod", j.SD[0].Role)
	assert.Equal(t, "Bearer", j.Authorization.Type)
	assert.NotEmpty(t, j.Authorization.CredentialsFile)

	keep := map[string]*regexp.Regexp{}
	for _, r := range j.Relabel {
		if r.Action == "keep" {
			require.Len(t, r.SourceLabels, 1)
			keep[r.SourceLabels[0]] = regexp.MustCompile("^(?:" + r.Regex + ")$")
		}
	}
	name := keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
	port := keep["__meta_kubernetes_pod_container_port_name"]
	require.NotNil(t, name, "the job keeps pods by their app.kubernetes.io/name label")
	require.NotNil(t, port, "the job keeps one container port by name")

	var ns corev1.Namespace
	readManifest(t, "namespace.yaml", "Namespace", &ns)
	assert.Equal(t, []string{ns.Name}, j.SD[0].Namespaces.Names, "the job looks in the manifests' namespace")
	for _, file := range []string{"controller.yaml", "unit.yaml"} {
		var spec corev1.PodTemplateSpec
		for _, kind := range []string{"StatefulSet", "DaemonSet", "Deployment"} {
			var w struct {
				Spec struct {
					Template corev1.PodTemplateSpec `json:"template"`
				} `json:"spec"`
			}
			if readManifest(t, file, kind, &w) {
				spec = w.Spec.Template
			}
		}
		require.NotEmpty(t, spec.Spec.Containers, "%s: no workload", file)
		assert.True(t, name.MatchString(spec.Labels["app.kubernetes.io/name"]), "%s: its pods are not kept (labels %v)", file, spec.Labels)
		kept := 0
		for _, c := range spec.Spec.Containers {
			for _, p := range c.Ports {
				if port.MatchString(p.Name) {
					kept++
					assert.Contains(t, c.Args, "--metrics=0.0.0.0:"+itoa(p.ContainerPort), "%s: port %q is not where --metrics listens", file, p.Name)
				}
			}
		}
		assert.Equal(t, 1, kept, "%s: ports the job keeps", file)
	}
}

// readManifest decodes the document of kind in deploy/k8s/base/file into
// v; false when there is none.
func readManifest(t *testing.T, file, kind string, v any) bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "k8s", "base", file))
	require.NoError(t, err)
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		var head struct {
			Kind string `json:"kind"`
		}
		if yaml.Unmarshal([]byte(doc), &head) != nil || head.Kind != kind {
			continue
		}
		require.NoError(t, yaml.Unmarshal([]byte(doc), v))
		return true
	}
	return false
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
