package bench

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDocsBenchPatternsRunSomething: every -bench (or a bench binary's
// -test.bench) pattern the docs give runs at least one benchmark of the
// package its command names, so that a command copied from them measures
// what the text says rather than nothing. Rows are known for
// BenchmarkSmallKV (smallKVRows); for other benchmarks only the pattern's
// first level is checked.
func TestDocsBenchPatternsRunSomething(t *testing.T) {
	benchArg := regexp.MustCompile(`-(?:test\.)?bench[ =]+(?:'([^']*)'|([A-Za-z][^\s` + "`" + `]*))`)
	pkgArg := regexp.MustCompile(`^[^` + "`" + `|;#]*?\s(\./[\w/]+)`)
	checked := 0
	for _, doc := range []string{"../docs/small-values.md", "UNITS.md", "../README.md"} {
		raw, err := os.ReadFile(doc)
		require.NoError(t, err)
		// Commands wrap across lines inside their backquotes.
		text := strings.Join(strings.Fields(string(raw)), " ")
		lastPkg := "./bench"
		for _, m := range benchArg.FindAllStringSubmatchIndex(text, -1) {
			var pattern string
			if m[2] >= 0 {
				pattern = text[m[2]:m[3]]
			} else {
				pattern = text[m[4]:m[5]]
			}
			// The package the command names; a bench binary's is ./bench
			// (go test -c ./bench), and a pattern given alone is of the
			// command before it.
			pkg := lastPkg
			if p := pkgArg.FindStringSubmatch(text[m[1]:]); p != nil {
				pkg = p[1]
			} else if strings.HasPrefix(text[m[0]:], "-test.") {
				pkg = "./bench"
			}
			lastPkg = pkg
			checked++
			t.Run(doc+"/"+pattern, func(t *testing.T) {
				levels := splitBenchPattern(pattern)
				var res []*regexp.Regexp
				for _, l := range levels {
					re, err := regexp.Compile(l)
					require.NoError(t, err, "%s: -bench %q", doc, pattern)
					res = append(res, re)
				}
				// A benchmark whose rows are not known here counts for a
				// pattern with levels below the first only when no
				// benchmark with known rows matches its first level
				// (BenchmarkRemoteSmallKV does not stand in for
				// BenchmarkSmallKV).
				var names, unchecked []string
				knownMatched := false
				for _, fn := range benchFuncs(t, filepath.Join("..", pkg)) {
					switch {
					case !res[0].MatchString(fn):
					case len(res) == 1:
						names = append(names, fn)
					case fn == "BenchmarkSmallKV":
						knownMatched = true
						for _, row := range smallKVRows() {
							if matchLevels(res[1:], strings.Split(row, "/")) {
								names = append(names, fn+"/"+row)
							}
						}
					default:
						unchecked = append(unchecked, fn)
					}
				}
				if len(names) == 0 && !knownMatched && len(unchecked) > 0 {
					t.Logf("%s: rows of %v not known here: only the first level of %q checked", doc, unchecked, pattern)
					names = unchecked
				}
				assert.NotEmpty(t, names, "%s: -bench %q in %s runs no benchmark", doc, pattern, pkg)
			})
		}
	}
	require.Greater(t, checked, 20, "the docs' commands were not found")
}

// TestSplitBenchPattern: a pattern splits at the slashes outside brackets
// and parentheses, as the testing package splits -bench.
func TestSplitBenchPattern(t *testing.T) {
	assert.Equal(t, []string{"SmallKV", ".*", "value=1KiB", "clients=(16|64)$"}, splitBenchPattern("SmallKV/.*/value=1KiB/clients=(16|64)$"))
	assert.Equal(t, []string{"a(b/c)", "[/]"}, splitBenchPattern("a(b/c)/[/]"))
	assert.False(t, matchLevels([]*regexp.Regexp{regexp.MustCompile(".*"), regexp.MustCompile("value=1KiB")},
		strings.Split(smallKVRows()[0], "/")), "value= is not the second level")
}

// splitBenchPattern splits a -bench pattern into its levels as the
// testing package does (testing's splitRegexp).
func splitBenchPattern(s string) []string {
	var out []string
	cs, cp, start := 0, 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			cs++
		case ']':
			if cs--; cs < 0 {
				cs = 0
			}
		case '(':
			if cs == 0 {
				cp++
			}
		case ')':
			if cs == 0 {
				cp--
			}
		case '\\':
			i++
		case '/':
			if cs == 0 && cp == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// matchLevels says whether a sub-benchmark's name levels match the
// pattern's levels below the first: each level the pattern has must be
// there and match.
func matchLevels(res []*regexp.Regexp, name []string) bool {
	if len(res) > len(name) {
		return false
	}
	for i, re := range res {
		if !re.MatchString(name[i]) {
			return false
		}
	}
	return true
}

// benchFuncs lists the Benchmark functions of the package in dir.
func benchFuncs(t *testing.T, dir string) []string {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no tests in %s", dir)
	decl := regexp.MustCompile(`(?m)^func (Benchmark\w+)\(b \*testing\.B\)`)
	var out []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
			out = append(out, m[1])
		}
	}
	return out
}
