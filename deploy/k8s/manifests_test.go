package k8s

// The checks of a build: what kubectl apply would accept but a cluster
// would then run wrong — a Service that selects no pod, a probe on a port
// nobody listens on, a mount of no volume, a Secret key that does not
// exist, a downward-API field that does not exist, $(VAR) that is never
// expanded, `tq serve` flags it refuses, a unit whose memory limit is
// below its arena, a client that would not find the unit's sockets.

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// fakeToken stands for the Secret's value when a container's environment
// is resolved for `tq serve --check-config`.
const fakeToken = "0123456789abcdef"

// fieldValues are the downward API's fields an env var may name, with a
// value to resolve them to (status.podIP as an IPv4 address, the usual
// case; IPv6 goes through the same flags: see README).
var fieldValues = map[string]string{
	"metadata.name":           "pod-0",
	"metadata.namespace":      "tq",
	"metadata.uid":            "00000000-0000-0000-0000-000000000000",
	"spec.nodeName":           "node-a",
	"spec.serviceAccountName": "default",
	"status.hostIP":           "192.0.2.10",
	"status.hostIPs":          "192.0.2.10",
	"status.podIP":            "10.0.0.7",
	"status.podIPs":           "10.0.0.7",
}

var labelField = regexp.MustCompile(`^metadata\.(labels|annotations)\['[^']+'\]$`)

// tqConfig is what `tq serve --check-config` prints, the parts checked.
type tqConfig struct {
	Role       string `json:"role"`
	Listen     string `json:"listen"`
	Controller string `json:"controller"`
	UnitListen string `json:"unit_listen"`
	SocketDir  string `json:"socket_dir"`
	Units      int    `json:"units"`
	Capacity   int64  `json:"capacity"`
	HugePages  bool   `json:"huge_pages"`
	DataDir    string `json:"data_dir"`
	InMemory   bool   `json:"in_memory"`
	Metrics    string `json:"metrics"`
	Pprof      string `json:"pprof"`
	// MetricsToken is --metrics-token-file, else $TQ_METRICS_TOKEN
	// (the environment's, not printed by --check-config).
	MetricsToken string `json:"metrics_token_file"`
	RDMADevice   string `json:"rdma_device"`
}

// checkTQ runs `tq serve --check-config` with args in env and returns
// its output; nil skips those checks (go test -short).
type checkTQ func(args, env []string) (string, error)

// unitMemoryHeadroom is what a unit's memory limit must hold beyond its
// arena: the Go heap, buffers, metadata.
const unitMemoryHeadroom = 512 << 20

// metricsConns is how many connections tq serve's --metrics endpoint
// holds at once (metricsLimits in cmd/tq); more wait to be accepted.
const metricsConns = 128

// pod is a pod template of a workload, with what the checks learn of it.
type pod struct {
	owner    *object
	labels   map[string]string
	spec     *corev1.PodSpec
	claims   []string // volumeClaimTemplates
	serve    map[string]*tqConfig
	problems *[]error
}

func (p *pod) bad(format string, args ...any) {
	*p.problems = append(*p.problems, fmt.Errorf("%v: "+format, append([]any{p.owner}, args...)...))
}

// checkAll builds every kustomization under fsys and checks each build;
// it also fails on YAML files that no kustomization reads.
func checkAll(fsys fs.FS, tq checkTQ) error {
	var dirs, yamls []string
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Name() == "kustomization.yaml":
			dirs = append(dirs, path.Dir(p))
		case strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml"):
			yamls = append(yamls, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		return errors.New("no kustomization.yaml")
	}
	var errs []error
	read := map[string]bool{}
	for _, d := range dirs {
		b, err := build(fsys, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range b.files {
			read[f] = true
		}
		if err := check(fsys, b, tq); err != nil {
			errs = append(errs, fmt.Errorf("kubectl apply -k %s:\n%w", d, err))
		}
	}
	for _, y := range yamls {
		if !read[y] {
			errs = append(errs, fmt.Errorf("%s: no kustomization reads it, so nothing checks it", y))
		}
	}
	return errors.Join(errs...)
}

// check checks one build. A build may name objects another build makes
// (the example client names the base's Secret): builds that do not
// include the base are checked together with it.
func check(fsys fs.FS, b *built, tq checkTQ) error {
	var problems []error
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	objs := b.objs
	if b.dir != "." {
		if base, err := build(fsys, "."); err == nil && !includes(objs, base.objs) {
			objs = append(slices.Clone(objs), base.objs...)
		}
	}
	byKind := func(kind, ns, name string) *object {
		for _, o := range objs {
			if o.kind == kind && o.name == name && o.namespace == ns {
				return o
			}
		}
		return nil
	}
	seen := map[string]*object{}
	for _, o := range objs {
		id := o.kind + "/" + o.namespace + "/" + o.name
		if prev := seen[id]; prev != nil {
			bad("%v and %v: the same object twice", prev, o)
		}
		seen[id] = o
	}

	// Pod templates, and the tq serve configuration of their containers.
	// Those of objects from another build serve as references; their
	// problems are that build's to report.
	var pods []*pod
	var elsewhere []error
	for _, o := range objs {
		p := &pod{owner: o, problems: &problems, serve: map[string]*tqConfig{}}
		if !slices.Contains(b.objs, o) {
			p.problems = &elsewhere
		}
		var sel *metav1.LabelSelector
		var tmpl *corev1.PodTemplateSpec
		switch w := o.typed.(type) {
		case *appsv1.StatefulSet:
			sel, tmpl = w.Spec.Selector, &w.Spec.Template
			for _, c := range w.Spec.VolumeClaimTemplates {
				p.claims = append(p.claims, c.Name)
			}
			svc := byKind("Service", o.namespace, w.Spec.ServiceName)
			switch {
			case svc == nil:
				p.bad("serviceName %q: no such Service", w.Spec.ServiceName)
			case svc.typed.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone:
				p.bad("serviceName %q: not a headless Service (clusterIP: None)", w.Spec.ServiceName)
			}
		case *appsv1.DaemonSet:
			sel, tmpl = w.Spec.Selector, &w.Spec.Template
		case *appsv1.Deployment:
			sel, tmpl = w.Spec.Selector, &w.Spec.Template
		case *batchv1.Job:
			sel, tmpl = w.Spec.Selector, &w.Spec.Template
		default:
			continue
		}
		p.labels, p.spec = tmpl.Labels, &tmpl.Spec
		if _, isJob := o.typed.(*batchv1.Job); !isJob || sel != nil {
			s, err := metav1.LabelSelectorAsSelector(sel)
			switch {
			case sel == nil:
				p.bad("no selector")
			case err != nil:
				p.bad("selector: %v", err)
			case s.Empty():
				p.bad("an empty selector")
			case !s.Matches(labels.Set(tmpl.Labels)):
				p.bad("selector %v does not match its pod template's labels %v", s, tmpl.Labels)
			}
		}
		checkPod(p, o.namespace, byKind, tq)
		pods = append(pods, p)
	}

	// Services: a selector that selects some pod; ports that pod declares.
	for _, o := range b.objs {
		svc, ok := o.typed.(*corev1.Service)
		if !ok {
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		var selected []*pod
		for _, p := range pods {
			if p.owner.namespace == o.namespace && len(svc.Spec.Selector) > 0 && sel.Matches(labels.Set(p.labels)) {
				selected = append(selected, p)
			}
		}
		if len(selected) == 0 {
			bad("%v: selector %v selects no pod template", o, svc.Spec.Selector)
			continue
		}
		for _, sp := range svc.Spec.Ports {
			for _, p := range selected {
				if _, _, err := targetPort(p, sp); err != nil {
					bad("%v: port %s (%d): %v", o, sp.Name, sp.Port, err)
				}
			}
		}
	}

	// Addresses: what units and clients dial is a Service that reaches a
	// controller's --listen port; clients open the units' sockets at the
	// path the units registered them under.
	for _, p := range pods {
		for _, c := range p.spec.Containers {
			if cfg := p.serve[c.Name]; cfg != nil && cfg.Role == "unit" {
				checkControllerAddr(p, "--controller", cfg.Controller, true, pods, objs)
			}
			for _, e := range c.Env {
				if e.Name == "TQ_ADDRESS" {
					checkControllerAddr(p, "$TQ_ADDRESS", e.Value, false, pods, objs)
				}
			}
		}
	}
	checkSocketDirs(pods, &problems)
	checkTokens(pods, &problems)
	return errors.Join(problems...)
}

// includes reports whether objs holds every object of base (a build that
// includes the base directory).
func includes(objs, base []*object) bool {
	for _, bo := range base {
		if !slices.ContainsFunc(objs, func(o *object) bool { return o.kind == bo.kind && o.name == bo.name }) {
			return false
		}
	}
	return true
}

func checkPod(p *pod, ns string, byKind func(kind, ns, name string) *object, tq checkTQ) {
	spec := p.spec
	vols := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if vols[v.Name] != nil {
			p.bad("volume %q twice", v.Name)
		}
		vols[v.Name] = v
		switch {
		case v.Secret != nil:
			checkKeys(p, byKind("Secret", ns, v.Secret.SecretName), "Secret", v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.ConfigMap != nil:
			checkKeys(p, byKind("ConfigMap", ns, v.ConfigMap.Name), "ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		case v.PersistentVolumeClaim != nil:
			if byKind("PersistentVolumeClaim", ns, v.PersistentVolumeClaim.ClaimName) == nil {
				p.bad("volume %q: no PersistentVolumeClaim %q", v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		case v.HostPath != nil:
			if !path.IsAbs(v.HostPath.Path) {
				p.bad("volume %q: hostPath %q is not absolute", v.Name, v.HostPath.Path)
			}
		}
	}
	mounted := map[string]bool{}
	portNames := map[string]string{}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		for _, m := range c.VolumeMounts {
			mounted[m.Name] = true
			if vols[m.Name] == nil && !slices.Contains(p.claims, m.Name) {
				p.bad("container %s mounts %q, which is neither a volume of the pod nor a volumeClaimTemplate", c.Name, m.Name)
			}
			if !path.IsAbs(m.MountPath) {
				p.bad("container %s: mountPath %q is not absolute", c.Name, m.MountPath)
			}
		}
		for _, port := range c.Ports {
			if msgs := validation.IsValidPortNum(int(port.ContainerPort)); len(msgs) > 0 {
				p.bad("container %s: port %d: %s", c.Name, port.ContainerPort, strings.Join(msgs, "; "))
			}
			if port.Name == "" {
				continue
			}
			if msgs := validation.IsValidPortName(port.Name); len(msgs) > 0 {
				p.bad("container %s: port name %q: %s", c.Name, port.Name, strings.Join(msgs, "; "))
			}
			if other, ok := portNames[port.Name]; ok {
				p.bad("port name %q in containers %s and %s", port.Name, other, c.Name)
			}
			portNames[port.Name] = c.Name
		}
		if c.Image == "" {
			p.bad("container %s: no image", c.Name)
		} else if name, _, _ := strings.Cut(c.Image, ":"); !strings.Contains(name, "/") {
			p.bad("container %s: image %q names no registry: a placeholder that no images entry of the kustomization rewrites", c.Name, c.Image)
		}
		env := checkEnv(p, &c, ns, byKind)
		for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			checkProbe(p, &c, pr)
		}
		if len(c.Command) == 0 && len(c.Args) > 0 && c.Args[0] == "serve" {
			args := expand(p, &c, c.Args, env)
			if tq != nil {
				checkServe(p, &c, args, env, tq)
			}
		} else {
			expand(p, &c, append(slices.Clone(c.Command), c.Args...), env)
		}
	}
	for name := range vols {
		if !mounted[name] {
			p.bad("volume %q is mounted by no container", name)
		}
	}
}

// checkKeys checks a volume's Secret or ConfigMap and the keys it picks.
func checkKeys(p *pod, o *object, kind, name string, items []corev1.KeyToPath, optional *bool) {
	if o == nil {
		if optional == nil || !*optional {
			p.bad("no %s %q", kind, name)
		}
		return
	}
	keys := objectKeys(o)
	for _, it := range items {
		if !keys[it.Key] {
			p.bad("%s %s has no key %q", kind, name, it.Key)
		}
	}
}

func objectKeys(o *object) map[string]bool {
	keys := map[string]bool{}
	switch t := o.typed.(type) {
	case *corev1.Secret:
		for k := range t.Data {
			keys[k] = true
		}
		for k := range t.StringData {
			keys[k] = true
		}
	case *corev1.ConfigMap:
		for k := range t.Data {
			keys[k] = true
		}
		for k := range t.BinaryData {
			keys[k] = true
		}
	}
	return keys
}

// checkEnv checks a container's env references and returns its
// environment as the kubelet would make it (fake values for fields and
// Secrets).
func checkEnv(p *pod, c *corev1.Container, ns string, byKind func(kind, ns, name string) *object) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			p.bad("container %s: env %s twice", c.Name, e.Name)
		}
		switch vf := e.ValueFrom; {
		case vf == nil:
			// $(VAR) of a variable defined above expands; any other
			// stays as it is, as the kubelet does.
			env[e.Name] = varRef.ReplaceAllStringFunc(e.Value, func(m string) string {
				if m == "$$" {
					return "$"
				}
				if v, ok := env[m[2:len(m)-1]]; ok {
					return v
				}
				return m
			})
		case vf.FieldRef != nil:
			v, ok := fieldValues[vf.FieldRef.FieldPath]
			if !ok && !labelField.MatchString(vf.FieldRef.FieldPath) {
				p.bad("container %s: env %s: fieldPath %q is not a field the downward API gives an env var", c.Name, e.Name, vf.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case vf.SecretKeyRef != nil:
			ref := vf.SecretKeyRef
			o := byKind("Secret", ns, ref.Name)
			switch {
			case o == nil && (ref.Optional == nil || !*ref.Optional):
				p.bad("container %s: env %s: no Secret %q", c.Name, e.Name, ref.Name)
			case o != nil && !objectKeys(o)[ref.Key]:
				p.bad("container %s: env %s: Secret %s has no key %q", c.Name, e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = fakeToken
		case vf.ConfigMapKeyRef != nil:
			ref := vf.ConfigMapKeyRef
			o := byKind("ConfigMap", ns, ref.Name)
			switch {
			case o == nil && (ref.Optional == nil || !*ref.Optional):
				p.bad("container %s: env %s: no ConfigMap %q", c.Name, e.Name, ref.Name)
			case o != nil && !objectKeys(o)[ref.Key]:
				p.bad("container %s: env %s: ConfigMap %s has no key %q", c.Name, e.Name, ref.Name, ref.Key)
			case o != nil:
				env[e.Name] = o.typed.(*corev1.ConfigMap).Data[ref.Key]
			}
		case vf.ResourceFieldRef != nil:
			env[e.Name] = "1"
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil && byKind("Secret", ns, ef.SecretRef.Name) == nil {
			p.bad("container %s: envFrom: no Secret %q", c.Name, ef.SecretRef.Name)
		}
		if ef.ConfigMapRef != nil && byKind("ConfigMap", ns, ef.ConfigMapRef.Name) == nil {
			p.bad("container %s: envFrom: no ConfigMap %q", c.Name, ef.ConfigMapRef.Name)
		}
	}
	return env
}

var varRef = regexp.MustCompile(`\$\$|\$\(([^)]*)\)`)

// expand does the kubelet's $(VAR) expansion of command and args; a
// reference to a variable the container does not define stays as it is
// there, which is never what was meant: an error here.
func expand(p *pod, c *corev1.Container, args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = varRef.ReplaceAllStringFunc(a, func(m string) string {
			if m == "$$" {
				return "$"
			}
			name := m[2 : len(m)-1]
			v, ok := env[name]
			if !ok {
				p.bad("container %s: argument %q refers to $(%s), which its env does not define", c.Name, a, name)
				return m
			}
			return v
		})
	}
	return out
}

// containerPort resolves a port by name or number among the container's
// declared ports.
func containerPort(c *corev1.Container, port intstr.IntOrString) (int32, error) {
	for _, cp := range c.Ports {
		if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("container %s declares no port %s", c.Name, port.String())
}

func checkProbe(p *pod, c *corev1.Container, pr *corev1.Probe) {
	if pr == nil {
		return
	}
	var port intstr.IntOrString
	switch {
	case pr.HTTPGet != nil:
		port = pr.HTTPGet.Port
		if !strings.HasPrefix(pr.HTTPGet.Path, "/") {
			p.bad("container %s: probe path %q does not start with /", c.Name, pr.HTTPGet.Path)
		}
	case pr.TCPSocket != nil:
		port = pr.TCPSocket.Port
	case pr.GRPC != nil:
		port = intstr.FromInt32(pr.GRPC.Port)
	default:
		return
	}
	if _, err := containerPort(c, port); err != nil {
		p.bad("probe: %v", err)
	}
}

// targetPort resolves a Service port to the container and port number of
// a selected pod.
func targetPort(p *pod, sp corev1.ServicePort) (*corev1.Container, int32, error) {
	tp := sp.TargetPort
	if tp.Type == intstr.Int && tp.IntVal == 0 {
		tp = intstr.FromInt32(sp.Port)
	}
	for i := range p.spec.Containers {
		if n, err := containerPort(&p.spec.Containers[i], tp); err == nil {
			return &p.spec.Containers[i], n, nil
		}
	}
	return nil, 0, fmt.Errorf("targetPort %s: no container of %v declares it", tp.String(), p.owner)
}

// mountOf returns the volume and mount under which dir lies in c.
func mountOf(p *pod, c *corev1.Container, dir string) (*corev1.VolumeMount, *corev1.Volume) {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if dir == m.MountPath || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			if best == nil || len(m.MountPath) > len(best.MountPath) {
				best = &c.VolumeMounts[i]
			}
		}
	}
	if best == nil {
		return nil, nil
	}
	for i := range p.spec.Volumes {
		if p.spec.Volumes[i].Name == best.Name {
			return best, &p.spec.Volumes[i]
		}
	}
	return best, nil // a volumeClaimTemplate
}

func listenPort(addr string) (int32, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(port, 10, 32)
	return int32(n), err
}

// checkServe puts a tq serve container's arguments to tq serve
// --check-config and checks the configuration against the pod: ports,
// volumes, memory.
func checkServe(p *pod, c *corev1.Container, args []string, env map[string]string, tq checkTQ) {
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	out, err := tq(args[1:], envList)
	if err != nil {
		out, _, _ = strings.Cut(out, "Usage of serve:") // the flag package's list of every flag
		p.bad("container %s: tq %s: %v\n%s", c.Name, strings.Join(args, " "), err, out)
		return
	}
	first, body, _ := strings.Cut(out, "\n")
	if want := "# tq serve: configuration ok; token from $TQ_TOKEN"; first != want {
		p.bad("container %s: %q, want %q: the token comes from the Secret, never from a file in the container", c.Name, first, want)
	}
	var cfg tqConfig
	if err := yaml.Unmarshal([]byte(body), &cfg); err != nil {
		p.bad("container %s: tq serve --check-config printed no configuration: %v\n%s", c.Name, err, out)
		return
	}
	p.serve[c.Name] = &cfg
	if cfg.MetricsToken == "" {
		cfg.MetricsToken = env["TQ_METRICS_TOKEN"]
	}

	// /metrics and --pprof beyond loopback ask for a token of their own:
	// without one tq serve warns at each start (--metrics) or refuses to
	// start (--pprof). --check-config refuses the latter too, but only
	// warns of the former, on stderr, which a check would not see.
	for _, l := range []struct{ flag, addr string }{{"--metrics", cfg.Metrics}, {"--pprof", cfg.Pprof}} {
		if host, _, err := net.SplitHostPort(l.addr); l.addr != "" && err == nil && host != "" && !isLoopback(host) && cfg.MetricsToken == "" {
			p.bad("container %s: %s %s listens beyond loopback without a metrics token ($TQ_METRICS_TOKEN from a Secret other than the cluster token's): whoever reaches the pod reads partition, task and field names, and tq serve warns (--metrics) or refuses to start (--pprof)", c.Name, l.flag, l.addr)
		}
	}

	// Probes reach --metrics on the pod's IP, not on loopback.
	if cfg.Metrics == "" {
		p.bad("container %s: no --metrics: /healthz and /readyz are served there", c.Name)
	} else if host, _, _ := net.SplitHostPort(cfg.Metrics); host == "" || isLoopback(host) {
		p.bad("container %s: --metrics %s listens on loopback only: the kubelet's probes cannot reach it", c.Name, cfg.Metrics)
	} else if mp, err := listenPort(cfg.Metrics); err == nil {
		// A storage unit has no liveness probe on --metrics: that port
		// holds at most metricsConns connections and answers anyone who
		// reaches the pod, so whoever holds them all fails the probe, and
		// the restart loses the unit's cells. (/healthz checks nothing
		// else: the probe would catch only a process that serves no HTTP.)
		hasUnits := cfg.Role == "unit" || cfg.Role == "all"
		probes := []*corev1.Probe{c.ReadinessProbe}
		if !hasUnits {
			probes = append(probes, c.LivenessProbe)
		}
		for _, pr := range probes {
			if pr == nil || pr.HTTPGet == nil {
				p.bad("container %s: no HTTP liveness and readiness probes on /healthz and /readyz", c.Name)
				continue
			}
			if n, err := containerPort(c, pr.HTTPGet.Port); err == nil && n != mp {
				p.bad("container %s: probe %s on port %d, but --metrics listens on %d", c.Name, pr.HTTPGet.Path, n, mp)
			}
		}
		if lp := c.LivenessProbe; hasUnits && lp != nil {
			var port *intstr.IntOrString
			switch {
			case lp.HTTPGet != nil:
				port = &lp.HTTPGet.Port
			case lp.TCPSocket != nil:
				port = &lp.TCPSocket.Port
			}
			if port != nil {
				if n, err := containerPort(c, *port); err == nil && n == mp {
					p.bad("container %s: liveness probe on the --metrics port %d, which holds at most %d connections and asks no token: whoever holds them fails the probe, and the restart loses the unit's cells", c.Name, mp, metricsConns)
				}
			}
		}
		if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
			p.bad("container %s: liveness probe on %s: /healthz is the one that does not depend on the controller", c.Name, c.LivenessProbe.HTTPGet.Path)
		}
	}
	declared := func(what, addr string) {
		n, err := listenPort(addr)
		if err != nil {
			p.bad("container %s: %s %q: %v", c.Name, what, addr, err)
			return
		}
		if _, err := containerPort(c, intstr.FromInt32(n)); err != nil {
			p.bad("container %s: %s %s: %v", c.Name, what, addr, err)
		}
	}
	switch cfg.Role {
	case "controller", "all":
		declared("--listen", cfg.Listen)
		if !cfg.InMemory {
			m, v := mountOf(p, c, cfg.DataDir)
			switch {
			case m == nil:
				p.bad("container %s: --data-dir %s is on no volume: the controller's state would die with the pod", c.Name, cfg.DataDir)
			case v != nil && v.PersistentVolumeClaim == nil:
				p.bad("container %s: --data-dir %s is on volume %q, not on a persistent volume claim", c.Name, cfg.DataDir, m.Name)
			}
			if sc := p.spec.SecurityContext; sc != nil && sc.FSGroup != nil &&
				(sc.FSGroupChangePolicy == nil || *sc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch) {
				p.bad("fsGroup without fsGroupChangePolicy OnRootMismatch: each start would make --data-dir group-writable, which tq refuses")
			}
		}
	}
	if cfg.Role == "unit" || cfg.Role == "all" {
		if cfg.UnitListen != "" {
			declared("--unit-listen", cfg.UnitListen)
		}
		if m, v := mountOf(p, c, cfg.SocketDir); m == nil || v == nil || v.HostPath == nil {
			p.bad("container %s: --socket-dir %q is not on a hostPath volume: clients in other pods could not reach the unit's sockets", c.Name, cfg.SocketDir)
		}
		units := int64(1) // --role unit runs one; --role all runs --units
		if cfg.Role == "all" {
			units = int64(cfg.Units)
		}
		need := resource.NewQuantity(units*cfg.Capacity+unitMemoryHeadroom, resource.BinarySI)
		lim, req := c.Resources.Limits[corev1.ResourceMemory], c.Resources.Requests[corev1.ResourceMemory]
		if lim.Cmp(*need) < 0 {
			p.bad("container %s: memory limit %s is below --capacity %s plus %s: the unit's shared memory is charged to its pod",
				c.Name, lim.String(), resource.NewQuantity(cfg.Capacity, resource.BinarySI), resource.NewQuantity(unitMemoryHeadroom, resource.BinarySI))
		}
		if req.Cmp(lim) != 0 {
			p.bad("container %s: memory request %s differs from its limit %s: the scheduler must reserve what the unit pins", c.Name, req.String(), lim.String())
		}
		if cfg.HugePages {
			hp := c.Resources.Limits[corev1.ResourceName("hugepages-2Mi")]
			if hp.CmpInt64(cfg.Capacity) < 0 {
				p.bad("container %s: --huge-pages with hugepages-2Mi %s below --capacity: the pod's hugetlb limit would not hold the arena", c.Name, hp.String())
			}
		}
		if cfg.RDMADevice != "" {
			caps := c.SecurityContext
			if caps == nil || caps.Capabilities == nil || !slices.Contains(caps.Capabilities.Add, "IPC_LOCK") {
				p.bad("container %s: --rdma-device without the IPC_LOCK capability: registering the arena pins it", c.Name)
			}
			if !slices.ContainsFunc(slices.Collect(maps.Keys(c.Resources.Limits)), func(r corev1.ResourceName) bool { return strings.Contains(string(r), "/") }) {
				p.bad("container %s: --rdma-device without a device plugin resource (such as rdma/hca_shared_devices_a): the pod has no device files", c.Name)
			}
		}
	}
}

// checkControllerAddr checks that addr (tcp://SERVICE[.NS[.svc...]]:PORT)
// names a Service whose port reaches a controller's --listen. What units
// dial must reach the controller before it is ready (units set true).
func checkControllerAddr(p *pod, what, addr string, units bool, pods []*pod, objs []*object) {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "tcp" || u.Port() == "" {
		p.bad("%s %q: want tcp://SERVICE:PORT", what, addr)
		return
	}
	name, rest, _ := strings.Cut(u.Hostname(), ".")
	ns := p.owner.namespace
	if rest != "" {
		ns, _, _ = strings.Cut(rest, ".")
	}
	var svc *corev1.Service
	for _, o := range objs {
		if s, ok := o.typed.(*corev1.Service); ok && o.name == name && o.namespace == ns {
			svc = s
		}
	}
	if svc == nil {
		p.bad("%s %q: no Service %s in namespace %s", what, addr, name, ns)
		return
	}
	port, _ := strconv.Atoi(u.Port())
	for _, sp := range svc.Spec.Ports {
		if int(sp.Port) != port {
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for _, q := range pods {
			if q.owner.namespace != ns || !sel.Matches(labels.Set(q.labels)) {
				continue
			}
			c, n, err := targetPort(q, sp)
			if err != nil {
				continue
			}
			cfg := q.serve[c.Name]
			if cfg == nil {
				return // not checked with tq (-short)
			}
			if l, err := listenPort(cfg.Listen); err == nil && l == n && (cfg.Role == "controller" || cfg.Role == "all") {
				if units && !svc.Spec.PublishNotReadyAddresses && c.ReadinessProbe != nil {
					p.bad("%s %q: Service %s routes only to a ready controller, but a controller started with --restore is ready only once a unit has registered (it waits 30 s for one, then exits): units must dial a Service with publishNotReadyAddresses", what, addr, name)
				}
				return
			}
			p.bad("%s %q: Service %s port %d reaches port %d of %v, which is not the controller's --listen %q", what, addr, name, port, n, q.owner, cfg.Listen)
			return
		}
	}
	p.bad("%s %q: Service %s has no port %d that reaches a pod", what, addr, name, port)
}

// checkSocketDirs: a pod that mounts the host directory of a unit's
// sockets mounts it at the unit's --socket-dir, the path the unit
// registered its sockets under and clients open.
func checkSocketDirs(pods []*pod, problems *[]error) {
	hostDirs := map[string]string{} // host path → the path inside the units
	for _, p := range pods {
		for _, c := range p.spec.Containers {
			cfg := p.serve[c.Name]
			if cfg == nil || (cfg.Role != "unit" && cfg.Role != "all") {
				continue
			}
			if m, v := mountOf(p, &c, cfg.SocketDir); m != nil && v != nil && v.HostPath != nil {
				hostDirs[v.HostPath.Path] = m.MountPath
			}
		}
	}
	for _, p := range pods {
		for _, v := range p.spec.Volumes {
			want, ok := "", false
			if v.HostPath != nil {
				want, ok = hostDirs[v.HostPath.Path]
			}
			if !ok {
				continue
			}
			for _, c := range p.spec.Containers {
				for _, m := range c.VolumeMounts {
					if m.Name == v.Name && m.MountPath != want {
						p.bad("container %s mounts the units' socket directory (host %s) at %s, but the units registered their sockets under %s",
							c.Name, v.HostPath.Path, m.MountPath, want)
					}
				}
			}
		}
	}
}

// checkTokens: every $TQ_TOKEN comes from the same Secret key, and
// every $TQ_METRICS_TOKEN from a Secret other than that one: a scraper
// given the metrics token must not get the cluster's, which reads and
// writes the data.
func checkTokens(pods []*pod, problems *[]error) {
	var first string
	secrets := map[string]string{} // the Secret of each $TQ_METRICS_TOKEN, by container
	for _, p := range pods {
		for _, c := range p.spec.Containers {
			for _, e := range c.Env {
				if e.Name != "TQ_TOKEN" && e.Name != "TQ_METRICS_TOKEN" {
					continue
				}
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					p.bad("container %s: $%s not from a Secret", c.Name, e.Name)
					continue
				}
				if e.Name == "TQ_METRICS_TOKEN" {
					secrets[p.owner.String()+" container "+c.Name] = e.ValueFrom.SecretKeyRef.Name
					continue
				}
				ref := e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
				if first == "" {
					first = ref
				} else if ref != first {
					p.bad("container %s: $TQ_TOKEN from %s, others from %s", c.Name, ref, first)
				}
			}
		}
	}
	tokenSecret, _, _ := strings.Cut(first, "/")
	for _, who := range slices.Sorted(maps.Keys(secrets)) {
		if secrets[who] == tokenSecret {
			*problems = append(*problems, fmt.Errorf("%s: $TQ_METRICS_TOKEN from Secret %s, which holds the cluster token: whoever may read it to scrape /metrics could read and write the data", who, tokenSecret))
		}
	}
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// tqDir holds the tq that buildTQ built, removed by TestMain.
var tqDir string

var buildTQ = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "tq-k8s-")
	if err != nil {
		return "", err
	}
	tqDir = dir
	bin := filepath.Join(dir, "tq")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/tqgo/tq/cmd/tq").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// realTQ returns a checkTQ that runs tq built from this tree, or nil in
// -short mode.
func realTQ(t *testing.T) checkTQ {
	t.Helper()
	if testing.Short() {
		return nil
	}
	bin, err := buildTQ()
	require.NoError(t, err)
	home := t.TempDir()
	return func(args, env []string) (string, error) {
		cmd := exec.Command(bin, append([]string{"serve", "--check-config"}, args...)...)
		cmd.Env = append([]string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}, env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return stderr.String(), err
		}
		return string(out), nil
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tqDir != "" {
		os.RemoveAll(tqDir)
	}
	os.Exit(code)
}

// Every manifest decodes strictly into its API type, every reference
// between them holds, and every tq serve container's arguments pass tq
// serve --check-config and agree with its pod.
func TestManifests(t *testing.T) {
	require.NoError(t, checkAll(os.DirFS("."), realTQ(t)))
}

// copyTree reads the manifests into memory, for breaking a copy.
func copyTree(t *testing.T) fstest.MapFS {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(os.DirFS("."), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".go") {
			return err
		}
		b, err := os.ReadFile(p)
		m[p] = &fstest.MapFile{Data: b}
		return err
	})
	require.NoError(t, err)
	return m
}

// The check fails on a broken copy of the manifests, naming what broke:
// each case changes one thing.
func TestManifestsCatchBreakage(t *testing.T) {
	tq := realTQ(t)
	for _, tc := range []struct {
		name      string
		file      string
		old, new  string
		want      string
		needsTQ   bool
		replaceAt int // which occurrence of old (0: the first)
	}{
		{name: "unknown kind", file: "base/unit.yaml", old: "kind: DaemonSet", new: "kind: DaemonSett", want: `unknown kind "DaemonSett"`},
		{name: "unknown field", file: "base/controller.yaml", old: "livenessProbe:", new: "livenesProbe:", want: `unknown field "livenesProbe"`},
		{name: "wrong apiVersion", file: "base/controller.yaml", old: "apiVersion: apps/v1", new: "apiVersion: v1", want: `apiVersion "v1", want "apps/v1"`},
		{name: "field of the wrong type", file: "base/unit.yaml", old: "containerPort: 7371", new: "containerPort: data", want: "containerPort"},
		{name: "service selects nothing", file: "base/controller.yaml", old: "app.kubernetes.io/component: controller", new: "app.kubernetes.io/component: controler", replaceAt: 1, want: "selects no pod template"},
		{name: "targetPort not declared", file: "base/controller.yaml", old: "targetPort: metrics", new: "targetPort: metric", want: "targetPort metric: no container"},
		{name: "probe port not declared", file: "base/controller.yaml", old: "port: metrics", new: "port: metricz", want: "probe: container controller declares no port metricz"},
		{name: "mount of no volume", file: "base/unit.yaml", old: "- name: sockets\n              mountPath", new: "- name: socket\n              mountPath", want: `mounts "socket", which is neither a volume`},
		{name: "claim template renamed", file: "base/controller.yaml", old: "        name: data\n      spec:", new: "        name: state\n      spec:", want: `mounts "data", which is neither`},
		{name: "no such Secret", file: "base/unit.yaml", old: "name: tq-token", new: "name: tq-tokens", want: `no Secret "tq-tokens"`},
		{name: "no such Secret key", file: "base/controller.yaml", old: "key: token", new: "key: tokn", want: `Secret tq-token has no key "tokn"`},
		{name: "no such ConfigMap", file: "example/client-job.yaml", old: "name: tq-client-example\n", new: "name: tq-client-exampel\n", replaceAt: 1, want: `no ConfigMap "tq-client-exampel"`},
		{name: "no such downward field", file: "base/unit.yaml", old: "fieldPath: status.podIP", new: "fieldPath: status.podIp", want: `fieldPath "status.podIp"`},
		{name: "undefined $(VAR)", file: "base/unit.yaml", old: "--unit-advertise=$(POD_IP)", new: "--unit-advertise=$(POD_ADDR)", want: "refers to $(POD_ADDR)"},
		{name: "selector does not match template", file: "base/unit.yaml", old: "    matchLabels:\n      app.kubernetes.io/name: tq", new: "    matchLabels:\n      app.kubernetes.io/name: tq-unit", want: "does not match its pod template's labels"},
		{name: "headless service missing", file: "base/controller.yaml", old: "serviceName: tq-controller-headless", new: "serviceName: tq-controller", want: "not a headless Service"},
		{name: "overlay inside its base", file: "rdma/kustomization.yaml", old: "../base", new: "../", want: "which kustomize refuses (a cycle)"},
		{name: "patch on a missing path", file: "rdma/unit-rdma.yaml", old: "resources/limits/", new: "resources/limitz/", want: `no member "limitz"`},
		{name: "orphan manifest", file: "extra.yaml", new: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n", want: "extra.yaml: no kustomization reads it"},
		{name: "placeholder image not rewritten", file: "example/kustomization.yaml", old: "  - name: tq\n", new: "  - name: tq-image\n", want: `image "tq" names no registry`},
		{name: "flag tq serve does not know", file: "base/unit.yaml", old: "--capacity=4GiB", new: "--capacty=4GiB", needsTQ: true, want: "flag provided but not defined: -capacty"},
		{name: "flag value tq serve refuses", file: "base/controller.yaml", old: "--fsync=batch", new: "--fsync=sometimes", needsTQ: true, want: "--fsync"},
		{name: "memory limit below capacity", file: "base/unit.yaml", old: "--capacity=4GiB", new: "--capacity=8GiB", needsTQ: true, want: "memory limit 4608Mi is below --capacity 8Gi"},
		{name: "metrics on loopback", file: "base/unit.yaml", old: "--metrics=0.0.0.0:9090", new: "--metrics=9090", needsTQ: true, want: "listens on loopback only"},
		{name: "unit liveness on the metrics port", file: "base/unit.yaml", old: "          readinessProbe:", new: "          livenessProbe:\n            httpGet:\n              path: /healthz\n              port: metrics\n          readinessProbe:", needsTQ: true, want: "liveness probe on the --metrics port 9090"},
		{name: "probe not on the metrics port", file: "base/unit.yaml", old: "--metrics=0.0.0.0:9090", new: "--metrics=0.0.0.0:9091", needsTQ: true, want: "but --metrics listens on 9091"},
		{name: "unit listens on an undeclared port", file: "base/unit.yaml", old: "--unit-listen=:7371", new: "--unit-listen=:7372", needsTQ: true, want: "--unit-listen :7372: container unit declares no port 7372"},
		{name: "socket dir off the hostPath", file: "base/unit.yaml", old: "--socket-dir=/run/tq", new: "--socket-dir=/tmp/tq", needsTQ: true, want: "is not on a hostPath volume"},
		{name: "client mounts the sockets elsewhere", file: "example/client-job.yaml", old: "mountPath: /run/tq", new: "mountPath: /var/run/tq", needsTQ: true, want: "registered their sockets under /run/tq"},
		{name: "data dir off the claim", file: "base/controller.yaml", old: "--data-dir=/var/lib/tq/data", new: "--data-dir=/data", needsTQ: true, want: "--data-dir /data is on no volume"},
		{name: "units dial a missing Service", file: "base/unit.yaml", old: "--controller=tcp://tq-controller-headless:7370", new: "--controller=tcp://tq-ctl:7370", needsTQ: true, want: "no Service tq-ctl"},
		{name: "units dial a Service of ready controllers only", file: "base/unit.yaml", old: "--controller=tcp://tq-controller-headless:7370", new: "--controller=tcp://tq-controller:7370", needsTQ: true, want: "routes only to a ready controller"},
		{name: "units dial the metrics port", file: "base/unit.yaml", old: "--controller=tcp://tq-controller-headless:7370", new: "--controller=tcp://tq-controller:9090", needsTQ: true, want: "not the controller's --listen"},
		{name: "token from a file", file: "base/unit.yaml", old: "            - name: TQ_TOKEN\n", new: "            - name: TQ_TOKEM\n", needsTQ: true, want: "the token comes from the Secret"},
		{name: "metrics without a metrics token", file: "base/unit.yaml", old: "            - name: TQ_METRICS_TOKEN\n", new: "            - name: TQ_METRICS_TOKEM\n", needsTQ: true, want: "--metrics 0.0.0.0:9090 listens beyond loopback without a metrics token"},
		{name: "metrics token from the cluster token's Secret", file: "base/controller.yaml", old: "name: tq-metrics-token", new: "name: tq-token", want: "which holds the cluster token"},
		{name: "rdma without IPC_LOCK", file: "rdma/unit-rdma.yaml", old: `value: ["IPC_LOCK"]`, new: `value: ["NET_RAW"]`, needsTQ: true, want: "--rdma-device without the IPC_LOCK capability"},
		{name: "huge pages without a hugepages request", file: "base/unit.yaml", old: "--huge-pages=false", new: "--huge-pages=true", needsTQ: true, want: "hugepages-2Mi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needsTQ && tq == nil {
				t.Skip("needs tq serve --check-config (not in -short mode)")
			}
			m := copyTree(t)
			if tc.old == "" {
				m[tc.file] = &fstest.MapFile{Data: []byte(tc.new)}
			} else {
				f := m[tc.file]
				require.NotNil(t, f, tc.file)
				s := string(f.Data)
				parts := strings.SplitN(s, tc.old, tc.replaceAt+2)
				require.Greater(t, len(parts), tc.replaceAt+1, "%s has no occurrence %d of %q", tc.file, tc.replaceAt, tc.old)
				s = strings.Join(parts[:tc.replaceAt+1], tc.old) + tc.new + parts[tc.replaceAt+1]
				m[tc.file] = &fstest.MapFile{Data: []byte(s)}
			}
			err := checkAll(m, tq)
			require.Error(t, err, "the broken copy passes")
			require.Contains(t, err.Error(), tc.want)
			t.Logf("caught: %v", err)
		})
	}
}
