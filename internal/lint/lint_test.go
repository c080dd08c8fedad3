// Package lint holds the repository's own rules, run as tests: the
// dependency direction between packages and code patterns we do not allow.
package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/tqgo/tq"

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// goFiles returns every non-generated .go file under dir, keyed by package
// directory relative to the root.
func goFiles(t *testing.T, root string) map[string][]string {
	t.Helper()
	files := map[string][]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") && p != root {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			rel, _ := filepath.Rel(root, filepath.Dir(p))
			files[filepath.ToSlash(rel)] = append(files[filepath.ToSlash(rel)], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// badDeps lists, per package prefix, TQ packages its production code must
// not import. Dependencies point inward: engine imports no other TQ
// package (but internal helpers); only cmd/ and bench/ wire everything
// together, and embedded wires an in-process cluster. The client library
// (client, kvapi) links no server: it imports neither controller nor
// storage, so a program that only talks to a cluster does not carry them.
// Test files may wire real components (a transport's tests serve a real
// storage unit).
var badDeps = map[string][]string{
	"engine":     {"controller", "storage", "transport", "wire", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
	"controller": {"storage", "transport", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
	"storage":    {"controller", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
	"transport":  {"controller", "storage", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
	"wire":       {"controller", "storage", "transport", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
	"client":     {"controller", "storage", "embedded", "kvapi", "stream", "cmd", "bench"},
	"kvapi":      {"controller", "storage", "embedded", "stream", "cmd", "bench"},
	"embedded":   {"kvapi", "stream", "cmd", "bench"},
	"metrics":    {"transport", "kvapi", "client", "embedded", "stream", "cmd", "bench"},
}

func TestDependencyDirection(t *testing.T) {
	root := repoRoot(t)
	fset := token.NewFileSet()
	for dir, files := range goFiles(t, root) {
		top := strings.SplitN(dir, "/", 2)[0]
		banned := badDeps[top]
		if len(banned) == 0 {
			continue
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue // tests may wire real components together
			}
			af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				rest, ok := strings.CutPrefix(path, module+"/")
				if !ok {
					continue
				}
				for _, b := range banned {
					if rest == b || strings.HasPrefix(rest, b+"/") {
						t.Errorf("%s imports %s: package %s must not depend on %s", f, path, top, b)
					}
				}
			}
		}
	}
}

// TestClientLinksNoServer checks what badDeps implies, through every
// package in between (internal ones included): a program built on the
// client library does not link the controller or a storage unit.
func TestClientLinksNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", module+"/client", module+"/kvapi").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(dep, module+"/")
		if !ok {
			continue
		}
		for _, b := range []string{"controller", "storage", "embedded"} {
			if rest == b || strings.HasPrefix(rest, b+"/") {
				t.Errorf("client or kvapi depends on %s", dep)
			}
		}
	}
}

// TestNoRawAtomics keeps index words on typed atomics (atomic.Uint64 …)
// instead of atomic.LoadInt64(&x) on plain integers.
func TestNoRawAtomics(t *testing.T) {
	root := repoRoot(t)
	raw := map[string]bool{}
	for _, op := range []string{"Load", "Store", "Add", "Swap", "CompareAndSwap", "And", "Or"} {
		for _, ty := range []string{"Int32", "Int64", "Uint32", "Uint64", "Uintptr", "Pointer"} {
			raw[op+ty] = true
		}
	}
	fset := token.NewFileSet()
	for _, files := range goFiles(t, root) {
		for _, f := range files {
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(af, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "atomic" && raw[sel.Sel.Name] {
					t.Errorf("%s: raw atomic.%s; use a typed atomic", fset.Position(sel.Pos()), sel.Sel.Name)
				}
				return true
			})
		}
	}
}

// TestErrorfWrapsWithW rejects fmt.Errorf calls that format an error with
// %v or %s instead of wrapping it with %w, which would hide sentinels from
// errors.Is.
func TestErrorfWrapsWithW(t *testing.T) {
	root := repoRoot(t)
	fset := token.NewFileSet()
	for _, files := range goFiles(t, root) {
		for _, f := range files {
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(af, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) < 2 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Errorf" {
					return true
				}
				if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "fmt" {
					return true
				}
				lit, ok := call.Args[0].(*ast.BasicLit)
				if !ok {
					return true
				}
				format, _ := strconv.Unquote(lit.Value)
				last := call.Args[len(call.Args)-1]
				if id, ok := last.(*ast.Ident); ok && (id.Name == "err" || strings.HasSuffix(id.Name, "Err")) &&
					!strings.Contains(format, "%w") {
					t.Errorf("%s: fmt.Errorf formats %s without %%w", fset.Position(call.Pos()), id.Name)
				}
				return true
			})
		}
	}
}
