package k8s

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// builtObjects builds the kustomization in dir and decodes its objects,
// by "Kind/name".
func builtObjects(t *testing.T, dir string) map[string]any {
	t.Helper()
	b, err := build(os.DirFS("."), dir)
	require.NoError(t, err)
	out := map[string]any{}
	for _, o := range b.objs {
		require.NoError(t, o.decode())
		out[o.kind+"/"+o.name] = o.typed
	}
	return out
}

// The values README's Kubernetes section states: the test of the
// manifests (TestManifests) holds them consistent with each other and
// with tq serve, this one holds them to what the README says they are.
func TestReadmeDescribesTheManifests(t *testing.T) {
	objs := builtObjects(t, ".")
	envFrom := func(c corev1.Container, name string) *corev1.EnvVar {
		for i := range c.Env {
			if c.Env[i].Name == name {
				return &c.Env[i]
			}
		}
		return nil
	}
	secretEnv := func(c corev1.Container, name, secret string) {
		t.Helper()
		e := envFrom(c, name)
		if assert.NotNil(t, e, "container %s: $%s", c.Name, name) && assert.NotNil(t, e.ValueFrom, "$%s", name) {
			assert.NotNil(t, e.ValueFrom.SecretKeyRef, "$%s from a Secret", name)
			if e.ValueFrom.SecretKeyRef != nil {
				assert.Equal(t, secret, e.ValueFrom.SecretKeyRef.Name, "$%s", name)
			}
		}
	}
	noSecretVolumes := func(spec corev1.PodSpec) {
		t.Helper()
		for _, v := range spec.Volumes {
			assert.Nil(t, v.Secret, "volume %s: the token is given as an env var, not a Secret volume (its files are symbolic links)", v.Name)
		}
	}

	ns, ok := objs["Namespace/tq"].(*corev1.Namespace)
	require.True(t, ok, "namespace tq")
	assert.Equal(t, "privileged", ns.Labels["pod-security.kubernetes.io/enforce"], "hostPath needs the privileged level, on namespace tq")

	// Controller: one replica, --data-dir on a 20 GiB claim, uid 65532,
	// OnRootMismatch, probes /readyz and /healthz on --metrics.
	ctrl, ok := objs["StatefulSet/tq-controller"].(*appsv1.StatefulSet)
	require.True(t, ok, "StatefulSet tq-controller")
	require.NotNil(t, ctrl.Spec.Replicas)
	assert.EqualValues(t, 1, *ctrl.Spec.Replicas)
	require.Len(t, ctrl.Spec.VolumeClaimTemplates, 1)
	assert.True(t, resource.MustParse("20Gi").Equal(ctrl.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]), "a 20 GiB claim")
	psc := ctrl.Spec.Template.Spec.SecurityContext
	require.NotNil(t, psc)
	assert.EqualValues(t, 65532, *psc.RunAsUser)
	assert.Equal(t, corev1.FSGroupChangeOnRootMismatch, *psc.FSGroupChangePolicy)
	cc := ctrl.Spec.Template.Spec.Containers[0]
	assert.Contains(t, cc.Args, "--data-dir=/var/lib/tq/data")
	assert.Equal(t, "/var/lib/tq", cc.VolumeMounts[0].MountPath)
	assert.Equal(t, ctrl.Spec.VolumeClaimTemplates[0].Name, cc.VolumeMounts[0].Name)
	require.NotNil(t, cc.ReadinessProbe)
	assert.Equal(t, "/readyz", cc.ReadinessProbe.HTTPGet.Path)
	require.NotNil(t, cc.LivenessProbe)
	assert.Equal(t, "/healthz", cc.LivenessProbe.HTTPGet.Path)
	for _, pr := range []*corev1.Probe{cc.ReadinessProbe, cc.LivenessProbe} {
		assert.Equal(t, "metrics", pr.HTTPGet.Port.String(), "the probes are on --metrics")
		assert.Empty(t, pr.HTTPGet.HTTPHeaders, "the probes ask no token")
	}
	secretEnv(cc, "TQ_TOKEN", "tq-token")
	secretEnv(cc, "TQ_METRICS_TOKEN", "tq-metrics-token")
	assert.Nil(t, envFrom(cc, "TQ_METRICS_TOKEN_FILE"))
	for _, a := range cc.Args {
		assert.False(t, strings.HasPrefix(a, "--metrics-token-file") || strings.HasPrefix(a, "--token-file"), "controller arg %s: tokens come from the environment", a)
	}
	noSecretVolumes(ctrl.Spec.Template.Spec)

	// Service tq-controller: 7370 control, 9090 metrics; the headless one
	// lists a controller that is not ready.
	svc, ok := objs["Service/tq-controller"].(*corev1.Service)
	require.True(t, ok, "Service tq-controller")
	ports := map[string]int32{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = p.Port
	}
	assert.Equal(t, map[string]int32{"control": 7370, "metrics": 9090}, ports)
	assert.False(t, svc.Spec.PublishNotReadyAddresses, "tq-controller routes only to a ready controller")
	hl, ok := objs["Service/tq-controller-headless"].(*corev1.Service)
	require.True(t, ok, "Service tq-controller-headless")
	assert.Equal(t, corev1.ClusterIPNone, hl.Spec.ClusterIP)
	assert.True(t, hl.Spec.PublishNotReadyAddresses)

	// Units: a DaemonSet listening on :7371, registering the pod IP,
	// sockets in the host directory /run/tq, dialing the headless Service;
	// readiness only; uid 0 with every capability dropped.
	unit, ok := objs["DaemonSet/tq-unit"].(*appsv1.DaemonSet)
	require.True(t, ok, "DaemonSet tq-unit")
	uc := unit.Spec.Template.Spec.Containers[0]
	for _, a := range []string{"--unit-listen=:7371", "--unit-advertise=$(POD_IP)", "--socket-dir=/run/tq", "--controller=tcp://tq-controller-headless:7370"} {
		assert.Contains(t, uc.Args, a)
	}
	if e := envFrom(uc, "POD_IP"); assert.NotNil(t, e) && assert.NotNil(t, e.ValueFrom) {
		assert.Equal(t, "status.podIP", e.ValueFrom.FieldRef.FieldPath, "the downward API's pod IP")
	}
	hostPath := func(spec corev1.PodSpec, c corev1.Container, dir string) bool {
		for _, m := range c.VolumeMounts {
			if m.MountPath != dir {
				continue
			}
			for _, v := range spec.Volumes {
				if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == dir {
					return true
				}
			}
		}
		return false
	}
	assert.True(t, hostPath(unit.Spec.Template.Spec, uc, "/run/tq"), "the unit's sockets are in the host directory /run/tq")
	require.NotNil(t, uc.ReadinessProbe)
	assert.Equal(t, "/readyz", uc.ReadinessProbe.HTTPGet.Path)
	assert.Equal(t, "metrics", uc.ReadinessProbe.HTTPGet.Port.String())
	assert.Nil(t, uc.LivenessProbe, "a unit has no liveness probe")
	assert.Nil(t, uc.StartupProbe)
	secretEnv(uc, "TQ_TOKEN", "tq-token")
	secretEnv(uc, "TQ_METRICS_TOKEN", "tq-metrics-token")
	noSecretVolumes(unit.Spec.Template.Spec)
	socketsPod := func(c corev1.Container) {
		t.Helper()
		require.NotNil(t, c.SecurityContext, "container %s", c.Name)
		require.NotNil(t, c.SecurityContext.RunAsUser, "container %s", c.Name)
		assert.EqualValues(t, 0, *c.SecurityContext.RunAsUser, "container %s runs as uid 0", c.Name)
		assert.Equal(t, []corev1.Capability{"ALL"}, c.SecurityContext.Capabilities.Drop, "container %s drops every capability", c.Name)
	}
	socketsPod(uc)
	assert.Empty(t, uc.SecurityContext.Capabilities.Add)
	for _, spec := range []corev1.PodSpec{unit.Spec.Template.Spec, ctrl.Spec.Template.Spec} {
		assert.False(t, spec.HostIPC || spec.HostNetwork || spec.HostPID, "no hostIPC, no hostNetwork")
	}

	// Secrets from the base's .env files, which git ignores.
	for _, s := range []string{"Secret/tq-token", "Secret/tq-metrics-token"} {
		assert.Contains(t, objs, s)
	}
	if git, err := exec.LookPath("git"); err == nil {
		for _, f := range []string{"base/token.env", "base/metrics-token.env"} {
			assert.NoError(t, exec.Command(git, "check-ignore", "-q", f).Run(), "git ignores %s", f)
		}
	}

	// The example client: mounts /run/tq (read-only) from the host, gets
	// $TQ_ADDRESS and $TQ_TOKEN, uid 0 with no capability.
	ex := builtObjects(t, "example")
	job, ok := ex["Job/tq-client-example"].(*batchv1.Job)
	require.True(t, ok, "Job tq-client-example in namespace tq")
	jc := job.Spec.Template.Spec.Containers[0]
	assert.True(t, hostPath(job.Spec.Template.Spec, jc, "/run/tq"), "the client mounts the host directory /run/tq at the same path")
	for _, m := range jc.VolumeMounts {
		if m.MountPath == "/run/tq" {
			assert.True(t, m.ReadOnly, "read-only is enough to connect")
		}
	}
	if e := envFrom(jc, "TQ_ADDRESS"); assert.NotNil(t, e) {
		assert.Equal(t, "tcp://tq-controller:7370", e.Value)
	}
	secretEnv(jc, "TQ_TOKEN", "tq-token")
	socketsPod(jc)
	assert.False(t, job.Spec.Template.Spec.HostIPC || job.Spec.Template.Spec.HostNetwork)

	// The rdma overlay: the device plugin's example resource,
	// --rdma-device and IPC_LOCK.
	rd := builtObjects(t, "rdma")
	ru, ok := rd["DaemonSet/tq-unit"].(*appsv1.DaemonSet)
	require.True(t, ok)
	rc := ru.Spec.Template.Spec.Containers[0]
	assert.True(t, slices.ContainsFunc(rc.Args, func(a string) bool { return strings.HasPrefix(a, "--rdma-device=") }))
	assert.Contains(t, rc.Resources.Limits, corev1.ResourceName("rdma/hca_shared_devices_a"))
	assert.Equal(t, []corev1.Capability{"IPC_LOCK"}, rc.SecurityContext.Capabilities.Add)
}
