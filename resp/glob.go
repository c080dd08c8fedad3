package resp

import "fmt"

// globMatch reports whether s matches pattern, a Redis glob, by the rules
// of Redis's stringmatchlen (util.c), so that KEYS and SCAN MATCH select
// what they select in Redis:
//
//   - * matches any run of bytes, ? any one byte;
//   - [abc] one of the bytes listed, [^abc] one not listed, [a-z] one in
//     the range (either way round), and a backslash in brackets takes the
//     next byte as it is; a [ never closed runs to the pattern's end;
//   - \x matches x, so \* \? \[ match themselves.
//
// Bytes compare as Redis's C chars do (signed), which matters only for
// ranges with bytes past 0x7f.
func globMatch(pattern, s string) bool {
	skipLonger := false
	return globMatchFrom(pattern, s, &skipLonger, 0, nil)
}

// Bounds on a glob's work in one KEYS or SCAN: globBaseSteps, plus
// globStepsPerByte for each byte of the names it is matched against.
// Matching takes up to the product of the pattern's length and a name's
// (in Redis too: "*", 32 Ki a's, "b" against a name of 64 Ki a's is a
// billion steps, seconds of CPU); a pattern that costs what reading the
// names costs, any pattern of up to globStepsPerByte bytes included,
// stays within them.
const (
	globBaseSteps    = 1 << 24
	globStepsPerByte = 64
)

// globWork matches names against one pattern within the bounds above.
type globWork struct {
	pattern string
	left    int
}

func newGlobWork(pattern string) *globWork {
	return &globWork{pattern: pattern, left: globBaseSteps}
}

// match reports whether name matches the pattern, or an error once the
// call's steps are spent.
func (w *globWork) match(name string) (bool, error) {
	w.left += globStepsPerByte * len(name)
	skipLonger := false
	m := globMatchFrom(w.pattern, name, &skipLonger, 0, &w.left)
	if w.left < 0 {
		return false, fmt.Errorf("MATCH pattern of %d bytes takes more than the %d steps, plus %d a byte of the keys matched, that TQ gives a glob in one call; use a simpler pattern (fewer *, shorter runs after one)", len(w.pattern), globBaseSteps, globStepsPerByte)
	}
	return m, nil
}

// globMatchFrom is stringmatchlen_impl: skipLonger is set once the rest
// of the pattern after a * matched nowhere in the rest of s, so that no
// earlier * tries longer matches (what keeps a pattern of many *s from
// taking exponential time); nesting bounds the recursion, as Redis does.
// left, unless nil, is the steps the match may take: one per byte of the
// pattern or the string looked at; once it is below 0 the match has
// stopped, and its result means nothing.
func globMatchFrom(pat, str string, skipLonger *bool, nesting int, left *int) bool {
	if nesting > 1000 {
		return false
	}
	// spent takes a step, and reports whether none was left.
	spent := func() bool {
		if left == nil {
			return false
		}
		*left--
		return *left < 0
	}
	// at reads the pattern as C reads a NUL-terminated string.
	at := func(i int) byte {
		if i < len(pat) {
			return pat[i]
		}
		return 0
	}
	p, s := 0, 0
	for p < len(pat) && s < len(str) {
		if spent() {
			return false
		}
		switch pat[p] {
		case '*':
			for at(p+1) == '*' {
				if spent() {
					return false
				}
				p++
			}
			if p == len(pat)-1 {
				return true
			}
			for ; s < len(str); s++ {
				if globMatchFrom(pat[p+1:], str[s:], skipLonger, nesting+1, left) {
					return true
				}
				if *skipLonger || left != nil && *left < 0 {
					return false
				}
			}
			*skipLonger = true
			return false
		case '?':
			s++
		case '[':
			p++
			not := at(p) == '^'
			if not {
				p++
			}
			match := false
		class:
			for {
				if spent() {
					return false
				}
				switch rest := len(pat) - p; {
				case at(p) == '\\' && rest >= 2:
					p++
					if pat[p] == str[s] {
						match = true
					}
				case at(p) == ']':
					break class
				case rest <= 0:
					p-- // the ++ after the class steps back onto the end
					break class
				case rest >= 3 && pat[p+1] == '-':
					start, end, c := int8(pat[p]), int8(pat[p+2]), int8(str[s])
					if start > end {
						start, end = end, start
					}
					p += 2
					if c >= start && c <= end {
						match = true
					}
				default:
					if pat[p] == str[s] {
						match = true
					}
				}
				p++
			}
			if not {
				match = !match
			}
			if !match {
				return false
			}
			s++
		case '\\':
			if len(pat)-p >= 2 {
				p++
			}
			fallthrough
		default:
			if pat[p] != str[s] {
				return false
			}
			s++
		}
		p++
		if s == len(str) {
			for at(p) == '*' {
				if spent() {
					return false
				}
				p++
			}
			break
		}
	}
	return p >= len(pat) && s == len(str)
}
