package wire

import (
	"errors"
	"testing"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// FuzzTags decodes arbitrary bytes as a row's tags (a peer's put, tag set
// or listing) and as a tag filter's value, as the controller and the
// clients do. Decoding must never panic, and must refuse with
// engine.ErrInvalid or ErrCorrupt; tags it takes must be valid
// (engine.Tags.Check), encode again within their JSONSize estimate, and
// decode back equal; a value it takes must match itself through an
// equals and an in filter, before and after the filter's own round trip.
func FuzzTags(f *testing.F) {
	for _, seed := range []struct {
		tags, value string
		name        string
	}{
		{`{"n":1,"s":"x"}`, `1`, "n"},
		{`{"l":[1.5,null,true],"o":{"k":"v"}}`, `[1.5,null,true]`, "l"},
		{`{"f":1.0,"big":18446744073709551615,"neg":-0}`, `1.0`, "f"},
		{`{"u":"\u00e9\ud83d\ude00\u0000"}`, `"\u00e9\ud83d\ude00\u0000"`, "u"},
		{`{"e":1e400}`, `-0.0`, "e"},
		{``, `null`, ""},
		{`{}`, `{"a":{"b":[]}}`, "a"},
	} {
		f.Add([]byte(seed.tags), []byte(seed.value), seed.name)
	}
	classified := func(t *testing.T, what string, err error) {
		if !errors.Is(err, engine.ErrInvalid) && !errors.Is(err, engine.ErrCorrupt) {
			t.Fatalf("%s: an unclassified error: %v", what, err)
		}
	}
	f.Fuzz(func(t *testing.T, tagBytes, value []byte, name string) {
		tags, err := TagsFromPB([][]byte{tagBytes, tagBytes})
		if err != nil {
			classified(t, "tags", err)
		} else if m := tags[0]; m != nil {
			if err := m.Check(); err != nil {
				t.Fatalf("decoded tags %q fail their check: %v", tagBytes, err)
			}
			if !m.Equal(tags[1]) {
				t.Fatalf("a repeated row's tags %v differ from the first's %v", tags[1], m)
			}
			again, err := TagsToPB(tags)
			if err != nil {
				t.Fatalf("decoded tags %q do not encode: %v", tagBytes, err)
			}
			if n := m.JSONSize(); len(again[0]) > n {
				t.Fatalf("tags %q encode in %d bytes, JSONSize estimates %d", again[0], len(again[0]), n)
			}
			back, err := TagsFromPB(again)
			if err != nil {
				t.Fatalf("tags %q, encoded again as %q, do not decode: %v", tagBytes, again[0], err)
			}
			if !back[0].Equal(m) {
				t.Fatalf("tags %q came back as %v, were %v", again[0], back[0], m)
			}
		}

		v, err := TagValueFromPB(value)
		if err != nil {
			classified(t, "value", err)
			return
		}
		if !engine.TagValueEqual(v, v) {
			t.Fatalf("value %q (%#v) is not equal to itself", value, v)
		}
		row := engine.Tags{name: v}
		for _, test := range []wirepb.TagTest{wirepb.TagTest_TAG_TEST_EQUALS, wirepb.TagTest_TAG_TEST_IN} {
			pcs := []*wirepb.TagCondition{{Name: name, Test: test, Values: [][]byte{value}}}
			flt, err := TagFilterFromPB(pcs)
			if err != nil {
				classified(t, "filter", err)
				continue
			}
			if !flt.Match(row) {
				t.Fatalf("filter %v does not match the value it names, %#v", flt, v)
			}
			pcs, err = TagFilterToPB(flt)
			if err != nil {
				t.Fatalf("filter %v does not encode: %v", flt, err)
			}
			flt2, err := TagFilterFromPB(pcs)
			if err != nil {
				t.Fatalf("filter %v, encoded again, does not decode: %v", flt, err)
			}
			if !flt2.Match(row) {
				t.Fatalf("filter %v after a round trip (%v) does not match %#v", flt, flt2, v)
			}
			if tags != nil && tags[0] != nil {
				_ = flt.Match(tags[0])
			}
			for _, c := range flt {
				_ = c.String()
			}
		}
	})
}
