package k8s

// What kubectl apply -k does with these directories, as far as they use
// kustomize: resources (files of YAML documents, or directories with a
// kustomization of their own), a namespace, JSON patches (RFC 6902) on a
// target, Secret and ConfigMap generators, and image names. A field of a
// kustomization this file does not know is an error: the test could not
// vouch for what it does.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

type kustomization struct {
	APIVersion         string      `json:"apiVersion"`
	Kind               string      `json:"kind"`
	Namespace          string      `json:"namespace,omitempty"`
	Resources          []string    `json:"resources,omitempty"`
	Patches            []patch     `json:"patches,omitempty"`
	SecretGenerator    []generator `json:"secretGenerator,omitempty"`
	ConfigMapGenerator []generator `json:"configMapGenerator,omitempty"`
	GeneratorOptions   struct {
		DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
	} `json:"generatorOptions,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

type patch struct {
	Path   string `json:"path"`
	Target struct {
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"target"`
}

type generator struct {
	Name  string   `json:"name"`
	Envs  []string `json:"envs,omitempty"`
	Files []string `json:"files,omitempty"`
}

// object is one resource of a build: its file, its generic form (what
// patches edit) and, once decoded, its typed form.
type object struct {
	file      string
	kind      string
	name      string
	namespace string
	raw       map[string]any
	typed     any
}

func (o *object) String() string { return fmt.Sprintf("%s %s (%s)", o.kind, o.name, o.file) }

// built is what one kustomization directory yields.
type built struct {
	dir   string
	objs  []*object
	files []string // every file the build read
}

// kinds are the API types the manifests may use: anything else is an
// error, since the test would not know its references.
var kinds = map[string]struct {
	apiVersion string
	new        func() any
}{
	"Namespace":             {"v1", func() any { return &corev1.Namespace{} }},
	"Service":               {"v1", func() any { return &corev1.Service{} }},
	"Secret":                {"v1", func() any { return &corev1.Secret{} }},
	"ConfigMap":             {"v1", func() any { return &corev1.ConfigMap{} }},
	"PersistentVolumeClaim": {"v1", func() any { return &corev1.PersistentVolumeClaim{} }},
	"StatefulSet":           {"apps/v1", func() any { return &appsv1.StatefulSet{} }},
	"DaemonSet":             {"apps/v1", func() any { return &appsv1.DaemonSet{} }},
	"Deployment":            {"apps/v1", func() any { return &appsv1.Deployment{} }},
	"Job":                   {"batch/v1", func() any { return &batchv1.Job{} }},
}

// build runs the kustomization in dir of fsys.
func build(fsys fs.FS, dir string) (*built, error) {
	b := &built{dir: dir}
	kpath := path.Join(dir, "kustomization.yaml")
	src, err := fs.ReadFile(fsys, kpath)
	if err != nil {
		return nil, err
	}
	b.files = append(b.files, kpath)
	var k kustomization
	if err := yaml.UnmarshalStrict(src, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", kpath, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", kpath, k.APIVersion, k.Kind)
	}
	for _, r := range k.Resources {
		p := path.Join(dir, r)
		fi, err := fs.Stat(fsys, p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %s: %w", kpath, r, err)
		}
		if fi.IsDir() {
			if rel, _ := filepathRel(p, dir); !strings.HasPrefix(rel, "..") {
				return nil, fmt.Errorf("%s: resource %s contains this kustomization's directory, which kustomize refuses (a cycle): make the shared part a directory of its own", kpath, r)
			}
			sub, err := build(fsys, p)
			if err != nil {
				return nil, err
			}
			b.objs = append(b.objs, sub.objs...)
			b.files = append(b.files, sub.files...)
			continue
		}
		objs, err := readObjects(fsys, p)
		if err != nil {
			return nil, err
		}
		b.objs = append(b.objs, objs...)
		b.files = append(b.files, p)
	}
	if len(k.SecretGenerator)+len(k.ConfigMapGenerator) > 0 && !k.GeneratorOptions.DisableNameSuffixHash {
		// With the hash suffix, only references inside this build are
		// rewritten; clients deployed apart would name a missing object.
		return nil, fmt.Errorf("%s: generated names get a hash suffix: set generatorOptions.disableNameSuffixHash", kpath)
	}
	for _, g := range k.SecretGenerator {
		o, files, err := generate(fsys, dir, "Secret", g)
		if err != nil {
			return nil, fmt.Errorf("%s: secretGenerator %s: %w", kpath, g.Name, err)
		}
		b.objs, b.files = append(b.objs, o), append(b.files, files...)
	}
	for _, g := range k.ConfigMapGenerator {
		o, files, err := generate(fsys, dir, "ConfigMap", g)
		if err != nil {
			return nil, fmt.Errorf("%s: configMapGenerator %s: %w", kpath, g.Name, err)
		}
		b.objs, b.files = append(b.objs, o), append(b.files, files...)
	}
	for _, p := range k.Patches {
		ppath := path.Join(dir, p.Path)
		src, err := fs.ReadFile(fsys, ppath)
		if err != nil {
			return nil, fmt.Errorf("%s: patch: %w", kpath, err)
		}
		b.files = append(b.files, ppath)
		var ops []jsonPatchOp
		if err := yaml.UnmarshalStrict(src, &ops); err != nil {
			return nil, fmt.Errorf("%s: a JSON patch (a list of operations): %w", ppath, err)
		}
		n := 0
		for _, o := range b.objs {
			if o.kind == p.Target.Kind && o.name == p.Target.Name {
				if err := applyPatch(o.raw, ops); err != nil {
					return nil, fmt.Errorf("%s on %v: %w", ppath, o, err)
				}
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("%s: patch target %s %s matches no resource", kpath, p.Target.Kind, p.Target.Name)
		}
	}
	for _, img := range k.Images {
		for _, o := range b.objs {
			for _, c := range containers(o.raw) {
				name, tag, _ := strings.Cut(c["image"].(string), ":")
				if name != img.Name {
					continue
				}
				if img.NewName != "" {
					name = img.NewName
				}
				if img.NewTag != "" {
					tag = img.NewTag
				}
				c["image"] = name
				if tag != "" {
					c["image"] = name + ":" + tag
				}
			}
		}
	}
	for _, o := range b.objs {
		if k.Namespace != "" && o.kind != "Namespace" {
			o.namespace = k.Namespace
			o.raw["metadata"].(map[string]any)["namespace"] = k.Namespace
		}
		if err := o.decode(); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// filepathRel is path.Rel for slash paths: the path of target from base.
func filepathRel(base, target string) (string, error) {
	b, t := strings.Split(path.Clean(base), "/"), strings.Split(path.Clean(target), "/")
	if path.Clean(base) == "." {
		b = nil
	}
	if path.Clean(target) == "." {
		t = nil
	}
	i := 0
	for i < len(b) && i < len(t) && b[i] == t[i] {
		i++
	}
	var up []string
	for range b[i:] {
		up = append(up, "..")
	}
	rel := path.Join(append(up, t[i:]...)...)
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

// containers returns the containers and init containers of a workload's
// pod template, in generic form (empty for other kinds).
func containers(raw map[string]any) []map[string]any {
	var out []map[string]any
	spec, _ := raw["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	pspec, _ := tmpl["spec"].(map[string]any)
	for _, key := range []string{"initContainers", "containers"} {
		cs, _ := pspec[key].([]any)
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok {
				if _, ok := m["image"].(string); ok {
					out = append(out, m)
				}
			}
		}
	}
	return out
}

// readObjects splits a file into its YAML documents.
func readObjects(fsys fs.FS, file string) ([]*object, error) {
	src, err := fs.ReadFile(fsys, file)
	if err != nil {
		return nil, err
	}
	var objs []*object
	for i, doc := range splitDocuments(src) {
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, i+1, err)
		}
		var raw map[string]any
		if err := yaml.Unmarshal(js, &raw); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, i+1, err)
		}
		if raw == nil {
			return nil, fmt.Errorf("%s, document %d: not a mapping", file, i+1)
		}
		o := &object{file: file, raw: raw}
		o.kind, _ = raw["kind"].(string)
		if md, ok := raw["metadata"].(map[string]any); ok {
			o.name, _ = md["name"].(string)
			o.namespace, _ = md["namespace"].(string)
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// splitDocuments cuts a YAML stream at its "---" lines, leaving out
// documents that hold only comments.
func splitDocuments(src []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), src...), []byte("\n---")) {
		empty := true
		for _, l := range strings.Split(string(d), "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				empty = false
			}
		}
		if !empty {
			docs = append(docs, d)
		}
	}
	return docs
}

// decode checks the object's apiVersion and decodes it strictly into its
// API type: an unknown field, a field of the wrong type or a duplicate
// is an error.
func (o *object) decode() error {
	k, ok := kinds[o.kind]
	if !ok {
		return fmt.Errorf("%s: unknown kind %q (the test knows %v)", o.file, o.kind, slices.Sorted(maps.Keys(kinds)))
	}
	if v, _ := o.raw["apiVersion"].(string); v != k.apiVersion {
		return fmt.Errorf("%v: apiVersion %q, want %q", o, v, k.apiVersion)
	}
	if o.name == "" {
		return fmt.Errorf("%v: no metadata.name", o)
	}
	js, err := yaml.Marshal(o.raw)
	if err != nil {
		return err
	}
	o.typed = k.new()
	if err := yaml.UnmarshalStrict(js, o.typed); err != nil {
		return fmt.Errorf("%v: %w", o, err)
	}
	return nil
}

// generate makes a generator's Secret or ConfigMap. An envs file that is
// not there (token.env is the operator's, never in git) is read from
// FILE.example, which names the same keys.
func generate(fsys fs.FS, dir, kind string, g generator) (*object, []string, error) {
	data := map[string]string{}
	var files []string
	for _, e := range g.Envs {
		p := path.Join(dir, e)
		src, err := fs.ReadFile(fsys, p)
		if errors.Is(err, fs.ErrNotExist) {
			p += ".example"
			src, err = fs.ReadFile(fsys, p)
		}
		if err != nil {
			return nil, nil, err
		}
		files = append(files, p)
		for i, l := range strings.Split(string(src), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return nil, nil, fmt.Errorf("%s:%d: want KEY=VALUE", p, i+1)
			}
			data[k] = v
		}
	}
	for _, f := range g.Files {
		p := path.Join(dir, f)
		src, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil, nil, err
		}
		files = append(files, p)
		data[path.Base(f)] = string(src)
	}
	// As kustomize writes them: a Secret's values in base64, of type Opaque.
	raw := map[string]any{"apiVersion": "v1", "kind": kind, "metadata": map[string]any{"name": g.Name}}
	if kind == "Secret" {
		enc := map[string]string{}
		for k, v := range data {
			enc[k] = base64.StdEncoding.EncodeToString([]byte(v))
		}
		raw["data"], raw["type"] = enc, "Opaque"
	} else {
		raw["data"] = data
	}
	js, err := yaml.Marshal(raw)
	if err != nil {
		return nil, nil, err
	}
	var generic map[string]any
	if err := yaml.Unmarshal(js, &generic); err != nil {
		return nil, nil, err
	}
	return &object{file: path.Join(dir, "kustomization.yaml"), kind: kind, name: g.Name, raw: generic}, files, nil
}

// jsonPatchOp is an RFC 6902 operation; add, replace and remove are
// supported.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

func applyPatch(doc map[string]any, ops []jsonPatchOp) error {
	for _, op := range ops {
		if err := applyOp(doc, op); err != nil {
			return fmt.Errorf("%s %s: %w", op.Op, op.Path, err)
		}
	}
	return nil
}

func applyOp(doc map[string]any, op jsonPatchOp) error {
	if op.Op != "add" && op.Op != "replace" && op.Op != "remove" {
		return fmt.Errorf("operation %q: this test applies add, replace and remove only", op.Op)
	}
	if !strings.HasPrefix(op.Path, "/") {
		return errors.New("a path starts with /")
	}
	toks := strings.Split(op.Path[1:], "/")
	for i, t := range toks {
		toks[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
	}
	// set replaces the container that holds the last token in its
	// parent (slices grow by value).
	var walk func(cur any, toks []string, set func(any)) error
	walk = func(cur any, toks []string, set func(any)) error {
		last := len(toks) == 1
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[toks[0]]
			if last {
				switch {
				case op.Op == "add":
					c[toks[0]] = op.Value
				case !ok:
					return fmt.Errorf("no member %q", toks[0])
				case op.Op == "replace":
					c[toks[0]] = op.Value
				default:
					delete(c, toks[0])
				}
				return nil
			}
			if !ok {
				return fmt.Errorf("no member %q", toks[0])
			}
			return walk(next, toks[1:], func(v any) { c[toks[0]] = v })
		case []any:
			if last && op.Op == "add" && toks[0] == "-" {
				set(append(c, op.Value))
				return nil
			}
			i, err := strconv.Atoi(toks[0])
			if err != nil || i < 0 || i > len(c) || (i == len(c) && !(last && op.Op == "add")) {
				return fmt.Errorf("index %q out of range (length %d)", toks[0], len(c))
			}
			if last {
				switch op.Op {
				case "add":
					set(slices.Insert(slices.Clone(c), i, op.Value))
				case "replace":
					c[i] = op.Value
				default:
					set(slices.Delete(slices.Clone(c), i, i+1))
				}
				return nil
			}
			return walk(c[i], toks[1:], func(v any) { c[i] = v })
		}
		return fmt.Errorf("%q is inside a scalar", toks[0])
	}
	return walk(doc, toks, func(any) {})
}

// kustomizeBin is a kustomize binary to check build against: $KUSTOMIZE,
// else kustomize on PATH, else "".
func kustomizeBin() string {
	if k := os.Getenv("KUSTOMIZE"); k != "" {
		return k
	}
	k, _ := exec.LookPath("kustomize")
	return k
}

// build agrees with kustomize itself, object for object and field for
// field, where a kustomize binary is at hand (go install
// sigs.k8s.io/kustomize/kustomize/v5@v5.8.0; $KUSTOMIZE names one).
func TestBuildMatchesKustomize(t *testing.T) {
	bin := kustomizeBin()
	if bin == "" {
		t.Skip("no kustomize on PATH and no $KUSTOMIZE: build is compared with kustomize where there is one")
	}
	// kustomize reads the files from disk, and base/token.env and
	// base/metrics-token.env exist on a deployer's machine only: a copy,
	// with each made from its example.
	m := copyTree(t)
	for _, env := range []string{"base/token.env", "base/metrics-token.env"} {
		if _, ok := m[env]; !ok {
			m[env] = m[env+".example"]
		}
	}
	root := t.TempDir()
	var dirs []string
	for p, f := range m {
		require.NoError(t, os.MkdirAll(filepath.Join(root, path.Dir(p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, p), f.Data, 0o644))
		if path.Base(p) == "kustomization.yaml" {
			dirs = append(dirs, path.Dir(p))
		}
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		t.Run("dir="+d, func(t *testing.T) {
			cmd := exec.Command(bin, "build", filepath.Join(root, d))
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			require.NoError(t, err, "kustomize build %s: %s", d, stderr.String())
			want := map[string]map[string]any{}
			for _, doc := range splitDocuments(out) {
				var obj map[string]any
				require.NoError(t, yaml.Unmarshal(doc, &obj))
				md, _ := obj["metadata"].(map[string]any)
				want[fmt.Sprintf("%s %v/%v", obj["kind"], md["namespace"], md["name"])] = obj
			}
			b, err := build(m, d)
			require.NoError(t, err)
			got := map[string]map[string]any{}
			for _, o := range b.objs {
				md := o.raw["metadata"].(map[string]any)
				got[fmt.Sprintf("%s %v/%v", o.kind, md["namespace"], md["name"])] = o.raw
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("build %s differs from kustomize build (-kustomize +build):\n%s", d, diff)
			}
		})
	}
}
