package lint

import (
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeLayout returns the rows of the README's Layout table: listed path
// to what it says the path holds.
func readmeLayout(t *testing.T, root string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	_, layout, ok := strings.Cut(string(b), "\n## Layout\n")
	require.True(t, ok, "README.md has no \"## Layout\" section")
	if i := strings.Index(layout, "\n## "); i >= 0 {
		layout = layout[:i]
	}
	rows := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\| (.*) \\|$").FindAllStringSubmatch(layout, -1) {
		rows[m[1]] = m[2]
	}
	require.NotEmpty(t, rows, "no rows read from the README's Layout table")
	return rows
}

// checkoutFiles lists the checkout's files as git sees them, tracked or
// new but not ignored (as make lint does), so that build outputs (bin/)
// and caches are not taken for the repository's folders. Outside a git
// checkout (a source archive) it walks the tree, short of hidden folders,
// bin/ and caches.
func checkoutFiles(t *testing.T, root string) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "__pycache__" || rel == "bin") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			files = append(files, rel)
		}
		return nil
	})
	require.NoError(t, err)
	return files
}

// The README's Layout table is a map of the tree that stays true: every
// path it lists is a folder of the checkout; every top-level folder is
// listed (itself, or folders inside it), and every Go package is listed
// itself or under a listed folder above it; and a file a row names
// (`place.go`, `controller/durability.md`, `grafana/`) is there, in the
// row's folder or from the root.
func TestReadmeLayoutMatchesTheTree(t *testing.T) {
	root := repoRoot(t)
	rows := readmeLayout(t, root)
	covered := func(dir string) bool {
		for d := dir; d != "."; d = path.Dir(d) {
			if _, ok := rows[d]; ok {
				return true
			}
		}
		return false
	}

	top := map[string]bool{}
	pkgs := map[string]bool{}
	for _, f := range checkoutFiles(t, root) {
		dir := path.Dir(f)
		if dir == "." || strings.HasPrefix(f, ".") {
			continue // a file at the root, or under .ci, .github
		}
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			continue // deleted in the work tree, not yet in the index
		}
		top[strings.SplitN(dir, "/", 2)[0]] = true
		if strings.HasSuffix(f, ".go") && !strings.Contains("/"+dir+"/", "/testdata/") {
			pkgs[dir] = true
		}
	}
	require.Contains(t, pkgs, "engine", "no Go packages found in the checkout")

	for dir := range top {
		inside := false
		for listed := range rows {
			inside = inside || strings.HasPrefix(listed, dir+"/")
		}
		assert.True(t, covered(dir) || inside, "the README's Layout lists no %s/ (a top-level folder)", dir)
	}
	for dir := range pkgs {
		assert.True(t, covered(dir), "the README's Layout lists neither the package %s nor a folder above it", dir)
	}

	fileRef := regexp.MustCompile("`([\\w.-]+(?:/[\\w.-]+)*(?:\\.(?:go|md|c|h|json|yaml)|/)|Dockerfile)`")
	for listed, what := range rows {
		st, err := os.Stat(filepath.Join(root, listed))
		if !assert.NoError(t, err, "the README's Layout lists %s", listed) {
			continue
		}
		assert.True(t, st.IsDir(), "the README's Layout lists %s, which is not a folder", listed)
		for _, m := range fileRef.FindAllStringSubmatch(what, -1) {
			_, inRow := os.Stat(filepath.Join(root, listed, m[1]))
			_, inRoot := os.Stat(filepath.Join(root, m[1]))
			assert.True(t, inRow == nil || inRoot == nil, "the README's Layout row %s names %s, in neither %s/ nor the root", listed, m[1], listed)
		}
	}
}

// The README's Layout says engine does no I/O: its code imports nothing
// that reaches files, sockets or the kernel.
func TestEngineDoesNoIO(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, module+"/engine").Output()
	require.NoError(t, err, "go list engine")
	imports := strings.Fields(string(out))
	require.Contains(t, imports, "fmt", "no imports read from go list")
	for _, imp := range imports {
		for _, io := range []string{"os", "net", "syscall", "io/fs", "io/ioutil", "golang.org/x/sys"} {
			assert.False(t, imp == io || strings.HasPrefix(imp, io+"/"), "engine imports %s", imp)
		}
	}
}
