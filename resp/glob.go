package resp

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
	return globMatchFrom(pattern, s, &skipLonger, 0)
}

// globMatchFrom is stringmatchlen_impl: skipLonger is set once the rest
// of the pattern after a * matched nowhere in the rest of s, so that no
// earlier * tries longer matches (what keeps a pattern of many *s from
// taking exponential time); nesting bounds the recursion, as Redis does.
func globMatchFrom(pat, str string, skipLonger *bool, nesting int) bool {
	if nesting > 1000 {
		return false
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
		switch pat[p] {
		case '*':
			for at(p+1) == '*' {
				p++
			}
			if p == len(pat)-1 {
				return true
			}
			for ; s < len(str); s++ {
				if globMatchFrom(pat[p+1:], str[s:], skipLonger, nesting+1) {
					return true
				}
				if *skipLonger {
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
				p++
			}
			break
		}
	}
	return p >= len(pat) && s == len(str)
}
