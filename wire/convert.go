package wire

// Conversions between engine types and wire messages. Decoders validate
// everything they return: lengths within MaxSegments, per-row arrays of
// equal length, known dtypes and kinds.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

func bad(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, engine.ErrInvalid)...)
}

// CheckCount rejects a count above MaxSegments.
func CheckCount(what string, n int) error {
	if n > MaxSegments {
		return bad("%d %s exceed the limit of %d", n, what, MaxSegments)
	}
	return nil
}

// CheckReadBuffers checks a read's destination buffers against its
// ranges: one buffer per range, each exactly the range's length, and no
// more ranges than a request may carry.
func CheckReadBuffers(ranges []engine.RemoteAddr, dst [][]byte) error {
	if len(dst) != len(ranges) {
		return bad("%d buffers for %d ranges", len(dst), len(ranges))
	}
	for i, r := range ranges {
		if uint64(len(dst[i])) != r.Len {
			return bad("buffer %d holds %d bytes, range is %d", i, len(dst[i]), r.Len)
		}
	}
	return CheckCount("ranges", len(ranges))
}

// ShapeToPB encodes a shape; nil encodes as unknown.
func ShapeToPB(s engine.Shape) *wirepb.Shape {
	if s == nil {
		return &wirepb.Shape{Unknown: true}
	}
	dims := make([]int64, len(s))
	for i, d := range s {
		dims[i] = int64(d)
	}
	return &wirepb.Shape{Dims: dims}
}

// ShapeFromPB decodes a shape; unknown decodes as nil, an absent message
// as the scalar shape (). It refuses more than 64 dimensions, a dimension
// outside [0, 2^31), and more elements than a cell holds
// ([engine.MaxCellBytes]).
func ShapeFromPB(p *wirepb.Shape) (engine.Shape, error) {
	if p == nil {
		return engine.Shape{}, nil
	}
	if p.Unknown {
		return nil, nil
	}
	if len(p.Dims) > 64 {
		return nil, bad("shape of %d dimensions", len(p.Dims))
	}
	s := make(engine.Shape, len(p.Dims))
	for i, d := range p.Dims {
		if d < 0 || d > math.MaxInt32 {
			return nil, bad("shape dimension %d", d)
		}
		s[i] = int(d)
	}
	// Each dimension fits, but their product may not: a count that wrapped
	// around would let a shape claim bytes that are not there.
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// DTypeFromPB decodes a dtype name; "" is InvalidDType (a placeholder).
func DTypeFromPB(s string) (engine.DType, error) {
	if s == "" || s == "invalid" {
		return engine.InvalidDType, nil
	}
	return engine.ParseDType(s)
}

// DTypeToPB encodes a dtype.
func DTypeToPB(d engine.DType) string {
	if d == engine.InvalidDType {
		return ""
	}
	return d.String()
}

// KindFromPB decodes a column kind; "" is InvalidKind.
func KindFromPB(s string) (engine.Kind, error) {
	var k engine.Kind
	if err := k.UnmarshalText([]byte(s)); err != nil {
		return 0, err
	}
	return k, nil
}

// KindToPB encodes a column kind.
func KindToPB(k engine.Kind) string {
	if k == engine.InvalidKind {
		return ""
	}
	return k.String()
}

// AddrsToPB encodes cell locations (unit included).
func AddrsToPB(locs []engine.CellLoc) *wirepb.Addrs {
	return encodeAddrs(&addrList{cells: locs}, len(locs), true)
}

// RangesToPB encodes byte ranges of one unit (no unit ids).
func RangesToPB(rs []engine.RemoteAddr) *wirepb.Addrs {
	return encodeAddrs(&addrList{ranges: rs}, len(rs), false)
}

// addrList is the cells or the ranges being encoded or decoded. Its
// accessors are small enough to inline in the per-address loops, where a
// func value per address cost more than the loop's work.
type addrList struct {
	cells  []engine.CellLoc
	ranges []engine.RemoteAddr
}

func (l *addrList) at(i int) (engine.UnitID, engine.RemoteAddr) {
	if l.cells != nil {
		return l.cells[i].Unit, l.cells[i].Addr
	}
	return 0, l.ranges[i]
}

func (l *addrList) set(i int, u engine.UnitID, a engine.RemoteAddr) {
	if l.cells != nil {
		l.cells[i] = engine.CellLoc{Unit: u, Addr: a}
	} else {
		l.ranges[i] = a
	}
}

// encodeAddrs writes n ranges in runs when that at least halves the
// entries (a dense column written by one put is a single run: its 1024
// cells cost a few bytes instead of five varints each), cell by cell
// otherwise.
func encodeAddrs(l *addrList, n int, withUnit bool) *wirepb.Addrs {
	runs, uniform := 0, true
	var prevU engine.UnitID
	var prev, first engine.RemoteAddr
	for i := range n {
		u, a := l.at(i)
		if i == 0 {
			first = a
		}
		if i == 0 || !follows(prevU, prev, u, a) {
			runs++
		}
		uniform = uniform && a.Len == first.Len
		prevU, prev = u, a
	}
	if n == 0 || runs > n/2 {
		a := &wirepb.Addrs{
			Segment: make([]uint32, n), Gen: make([]uint32, n), Offset: make([]uint64, n), Len: make([]uint64, n),
		}
		if withUnit {
			a.Unit = make([]uint32, n)
		}
		for i := range n {
			u, r := l.at(i)
			if withUnit {
				a.Unit[i] = uint32(u)
			}
			a.Segment[i], a.Gen[i], a.Offset[i], a.Len[i] = r.Segment, r.Gen, r.Offset, r.Len
		}
		return a
	}
	a := &wirepb.Addrs{
		RunCount: make([]uint32, 0, runs), RunSegment: make([]uint32, 0, runs),
		RunGen: make([]uint32, 0, runs), RunOffset: make([]uint64, 0, runs),
	}
	if withUnit {
		a.RunUnit = make([]uint32, 0, runs)
	}
	if uniform {
		a.RunLen = []uint64{first.Len}
	} else {
		a.RunLen = make([]uint64, n)
	}
	for i := range n {
		u, r := l.at(i)
		if !uniform {
			a.RunLen[i] = r.Len
		}
		if i > 0 && follows(prevU, prev, u, r) && a.RunCount[len(a.RunCount)-1] < math.MaxUint32 {
			a.RunCount[len(a.RunCount)-1]++
		} else {
			a.RunCount = append(a.RunCount, 1)
			a.RunSegment = append(a.RunSegment, r.Segment)
			a.RunGen = append(a.RunGen, r.Gen)
			a.RunOffset = append(a.RunOffset, r.Offset)
			if withUnit {
				a.RunUnit = append(a.RunUnit, uint32(u))
			}
		}
		prevU, prev = u, r
	}
	return a
}

// follows reports whether range b starts where a ends, in the same extent.
func follows(ua engine.UnitID, a engine.RemoteAddr, ub engine.UnitID, b engine.RemoteAddr) bool {
	return ua == ub && a.Segment == b.Segment && a.Gen == b.Gen && a.Offset+a.Len == b.Offset
}

// decodeAddrs checks a's shape and decodes its ranges into dst: cells when
// withUnit, ranges otherwise.
func decodeAddrs(a *wirepb.Addrs, withUnit bool, dst *addrList) error {
	alloc := func(n int) {
		if withUnit {
			dst.cells = make([]engine.CellLoc, n)
		} else {
			dst.ranges = make([]engine.RemoteAddr, n)
		}
	}
	if a == nil {
		alloc(0)
		return nil
	}
	if len(a.RunCount) == 0 {
		if len(a.RunUnit)+len(a.RunSegment)+len(a.RunGen)+len(a.RunOffset)+len(a.RunLen) != 0 {
			return bad("address runs without counts")
		}
		n := len(a.Offset)
		if len(a.Segment) != n || len(a.Gen) != n || len(a.Len) != n || (withUnit && len(a.Unit) != n) || (!withUnit && len(a.Unit) != 0 && len(a.Unit) != n) {
			return bad("address arrays of different lengths")
		}
		if err := CheckCount("addresses", n); err != nil {
			return err
		}
		alloc(n)
		for i := range n {
			var u engine.UnitID
			if len(a.Unit) != 0 {
				u = engine.UnitID(a.Unit[i])
			}
			if a.Offset[i]+a.Len[i] < a.Offset[i] {
				// As a run's: an end past 2^64 would read as a small one.
				return bad("address %d overflows: offset %d + length %d ends past 2^64", i, a.Offset[i], a.Len[i])
			}
			dst.set(i, u, engine.RemoteAddr{Segment: a.Segment[i], Gen: a.Gen[i], Offset: a.Offset[i], Len: a.Len[i]})
		}
		return nil
	}
	runs := len(a.RunCount)
	if len(a.Unit)+len(a.Segment)+len(a.Gen)+len(a.Offset)+len(a.Len) != 0 {
		return bad("addresses in both forms")
	}
	if len(a.RunSegment) != runs || len(a.RunGen) != runs || len(a.RunOffset) != runs ||
		(withUnit && len(a.RunUnit) != runs) || (!withUnit && len(a.RunUnit) != 0 && len(a.RunUnit) != runs) {
		return bad("address run arrays of different lengths")
	}
	n := 0
	for _, c := range a.RunCount {
		if c == 0 {
			return bad("empty address run")
		}
		n += int(c)
		if err := CheckCount("addresses", n); err != nil {
			return err
		}
	}
	if len(a.RunLen) != 1 && len(a.RunLen) != n {
		return bad("%d run lengths for %d addresses", len(a.RunLen), n)
	}
	alloc(n)
	i := 0
	for r, c := range a.RunCount {
		var u engine.UnitID
		if len(a.RunUnit) != 0 {
			u = engine.UnitID(a.RunUnit[r])
		}
		off := a.RunOffset[r]
		for range c {
			l := a.RunLen[0]
			if len(a.RunLen) != 1 {
				l = a.RunLen[i]
			}
			if off+l < off {
				return bad("address run overflows")
			}
			dst.set(i, u, engine.RemoteAddr{Segment: a.RunSegment[r], Gen: a.RunGen[r], Offset: off, Len: l})
			off += l
			i++
		}
	}
	return nil
}

// RunsToPB encodes runs of cells (see [engine.CellRun]) in the run form
// of Addrs, exactly as [AddrsToPB] would encode their cells one by one.
func RunsToPB(runs []engine.CellRun) *wirepb.Addrs {
	a := &wirepb.Addrs{
		RunCount: make([]uint32, len(runs)), RunUnit: make([]uint32, len(runs)), RunSegment: make([]uint32, len(runs)),
		RunGen: make([]uint32, len(runs)), RunOffset: make([]uint64, len(runs)),
	}
	uniform := true
	n := 0
	for i, r := range runs {
		a.RunCount[i], a.RunUnit[i], a.RunSegment[i] = uint32(r.Count), uint32(r.Unit), r.First.Segment
		a.RunGen[i], a.RunOffset[i] = r.First.Gen, r.First.Offset
		uniform = uniform && r.First.Len == runs[0].First.Len
		n += r.Count
	}
	switch {
	case len(runs) == 0:
	case uniform:
		a.RunLen = []uint64{runs[0].First.Len}
	default:
		a.RunLen = make([]uint64, 0, n)
		for _, r := range runs {
			for range r.Count {
				a.RunLen = append(a.RunLen, r.First.Len)
			}
		}
	}
	return a
}

// RunsFromPB decodes a's run form as runs of equal cells, without
// expanding them, when it is one: every run's cells of one length. ok is
// false otherwise (cell by cell, or cells of different lengths in a run);
// decode those with [AddrsFromPB].
func RunsFromPB(a *wirepb.Addrs) (runs []engine.CellRun, ok bool, err error) {
	if a == nil || len(a.RunCount) == 0 || len(a.RunLen) != 1 {
		return nil, false, nil
	}
	if len(a.Unit)+len(a.Segment)+len(a.Gen)+len(a.Offset)+len(a.Len) != 0 {
		return nil, false, bad("addresses in both forms")
	}
	k := len(a.RunCount)
	if len(a.RunSegment) != k || len(a.RunGen) != k || len(a.RunOffset) != k || len(a.RunUnit) != k {
		return nil, false, bad("address run arrays of different lengths")
	}
	l := a.RunLen[0]
	runs = make([]engine.CellRun, k)
	n := 0
	for i, c := range a.RunCount {
		if c == 0 {
			return nil, false, bad("empty address run")
		}
		n += int(c)
		if err := CheckCount("addresses", n); err != nil {
			return nil, false, err
		}
		off := a.RunOffset[i]
		if l != 0 && (uint64(c) > math.MaxUint64/l || off+uint64(c)*l < off) {
			return nil, false, bad("address run overflows")
		}
		runs[i] = engine.CellRun{Unit: engine.UnitID(a.RunUnit[i]), First: engine.RemoteAddr{Segment: a.RunSegment[i], Gen: a.RunGen[i], Offset: off, Len: l}, Count: int(c)}
	}
	return runs, true, nil
}

// WritePayload is the payload of a WRITE of extents: their pieces back to
// back, empty ones left out.
func WritePayload(extents [][][]byte) net.Buffers {
	n := 0
	for _, pieces := range extents {
		n += len(pieces)
	}
	payload := make(net.Buffers, 0, n)
	for _, pieces := range extents {
		for _, p := range pieces {
			if len(p) > 0 {
				payload = append(payload, p)
			}
		}
	}
	return payload
}

// WrittenExtents decodes a WRITE reply and checks that it holds one
// extent of each size asked for.
func WrittenExtents(reply *wirepb.WriteReply, sizes []uint64) ([]engine.RemoteAddr, error) {
	return WrittenExtentsAt(reply, sizes, -1)
}

// WrittenExtentsAt is [WrittenExtents] for a WRITE request that carries
// part of a larger write (a stripe), from the write's extent first on:
// its errors name the extents by their index in the whole write. A
// negative first means the request is the whole write.
func WrittenExtentsAt(reply *wirepb.WriteReply, sizes []uint64, first int) ([]engine.RemoteAddr, error) {
	if n := AddrCount(reply.Extents); n != uint64(len(sizes)) {
		if first >= 0 {
			return nil, fmt.Errorf("unit stored %d extents for the write's extents %d to %d, asked for %d: %w", n, first, first+len(sizes)-1, len(sizes), engine.ErrCorrupt)
		}
		return nil, fmt.Errorf("unit stored %d extents, asked for %d: %w", n, len(sizes), engine.ErrCorrupt)
	}
	addrs, err := RangesFromPB(reply.Extents)
	if err != nil {
		return nil, err
	}
	for i, a := range addrs {
		if a.Len != sizes[i] {
			return nil, fmt.Errorf("unit stored extent %d with %d bytes, asked for %d: %w", max(first, 0)+i, a.Len, sizes[i], engine.ErrCorrupt)
		}
	}
	return addrs, nil
}

// AddrsFromPB decodes cell locations.
func AddrsFromPB(a *wirepb.Addrs) ([]engine.CellLoc, error) {
	var l addrList
	if err := decodeAddrs(a, true, &l); err != nil {
		return nil, err
	}
	return l.cells, nil
}

// AddrCount returns how many addresses a claims to hold — the length of
// its flat arrays, or the sum of its run counts — without decoding them.
// A reply that must hold a known number of addresses is refused on it
// before decoding: the run form claims up to [MaxSegments] addresses in
// a few bytes, and decoding allocates each.
func AddrCount(a *wirepb.Addrs) uint64 {
	if a == nil {
		return 0
	}
	if len(a.RunCount) == 0 {
		return uint64(len(a.Offset))
	}
	var n uint64
	for _, c := range a.RunCount {
		n += uint64(c)
	}
	return n
}

// RangesFromPB decodes byte ranges (ignoring unit ids).
func RangesFromPB(a *wirepb.Addrs) ([]engine.RemoteAddr, error) {
	var l addrList
	if err := decodeAddrs(a, false, &l); err != nil {
		return nil, err
	}
	return l.ranges, nil
}

// JSONToPB encodes a tag map (or extra info) as JSON; nil encodes as empty.
func JSONToPB(m map[string]any) ([]byte, error) {
	if m == nil {
		return nil, nil
	}
	if b, ok := appendFlatJSON(nil, m); ok {
		return b, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode tags: %w: %w", engine.ErrInvalid, err)
	}
	return b, nil
}

// JSONFromPB decodes a JSON object; empty decodes as nil. Whole numbers
// that fit come back as int64, others as float64, so tags compare the same
// on both sides of the wire.
func JSONFromPB(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if m, ok := flatJSON(b); ok {
		return m, nil
	}
	return jsonFromPBSlow(b)
}

// jsonFromPBSlow is [JSONFromPB] by encoding/json, for what flatJSON
// leaves.
func jsonFromPBSlow(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, bad("tags are not a JSON object: %s", err.Error())
	}
	if err := onlyOne(dec); err != nil {
		return nil, bad("tags %q: %s", b, err.Error())
	}
	for k, v := range m {
		n, err := numbers(v)
		if err != nil {
			return nil, bad("tag %q: %s", k, err.Error())
		}
		m[k] = n
	}
	return m, nil
}

// onlyOne refuses anything but white space after the value dec decoded.
func onlyOne(dec *json.Decoder) error {
	var extra json.RawMessage
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
		return nil
	case err != nil:
		return fmt.Errorf("bytes after the JSON value: %w", err)
	}
	return errors.New("more than one JSON value")
}

// numbers turns each json.Number into the value engine.JSONNumber keeps;
// a number no float64 holds is refused.
func numbers(v any) (any, error) {
	var err error
	switch x := v.(type) {
	case json.Number:
		return engine.JSONNumber(x)
	case map[string]any:
		for k, e := range x {
			if x[k], err = numbers(e); err != nil {
				return nil, err
			}
		}
	case []any:
		for i, e := range x {
			if x[i], err = numbers(e); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// TagValueToPB encodes one tag value as JSON; nil (absent) encodes as
// empty.
func TagValueToPB(v any) ([]byte, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode tag value: %w: %w", engine.ErrInvalid, err)
	}
	return b, nil
}

// TagValueFromPB decodes one JSON value; empty and null decode as nil.
// Numbers come back as JSONFromPB's do.
func TagValueFromPB(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, bad("tag value is not JSON: %s", err.Error())
	}
	if err := onlyOne(dec); err != nil {
		return nil, bad("tag value %q: %s", b, err.Error())
	}
	v, err := numbers(v)
	if err != nil {
		return nil, bad("tag value %q: %s", b, err.Error())
	}
	return v, nil
}

var tagTests = map[engine.TagTest]wirepb.TagTest{
	engine.TagEquals: wirepb.TagTest_TAG_TEST_EQUALS,
	engine.TagIn:     wirepb.TagTest_TAG_TEST_IN,
	engine.TagExists: wirepb.TagTest_TAG_TEST_EXISTS,
	engine.TagAbsent: wirepb.TagTest_TAG_TEST_ABSENT,
}

// TagFilterToPB encodes a tag filter, checking it first.
func TagFilterToPB(f engine.TagFilter) ([]*wirepb.TagCondition, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	out := make([]*wirepb.TagCondition, len(f))
	for i, c := range f {
		pc := &wirepb.TagCondition{Name: c.Name, Test: tagTests[c.Test], Values: make([][]byte, len(c.Values))}
		for j, v := range c.Values {
			b, err := json.Marshal(v) // null too: a value, not "absent"
			if err != nil {
				return nil, fmt.Errorf("tag %q: encode value: %w: %w", c.Name, engine.ErrInvalid, err)
			}
			pc.Values[j] = b
		}
		out[i] = pc
	}
	return out, nil
}

// TagFilterFromPB decodes and checks a tag filter.
func TagFilterFromPB(pcs []*wirepb.TagCondition) (engine.TagFilter, error) {
	if len(pcs) > engine.MaxTagConditions {
		return nil, bad("tag filter of %d conditions (at most %d)", len(pcs), engine.MaxTagConditions)
	}
	if len(pcs) == 0 {
		return nil, nil
	}
	f := make(engine.TagFilter, len(pcs))
	for i, pc := range pcs {
		c := engine.TagCondition{Name: pc.Name}
		for t, pt := range tagTests {
			if pt == pc.Test {
				c.Test = t
			}
		}
		if c.Test == 0 {
			return nil, bad("tag %q: unknown test %v", pc.Name, pc.Test)
		}
		if len(pc.Values) > engine.MaxTagValues {
			return nil, bad("tag %q: %d values (at most %d)", pc.Name, len(pc.Values), engine.MaxTagValues)
		}
		if len(pc.Values) > 0 {
			c.Values = make([]any, len(pc.Values))
		}
		for j, b := range pc.Values {
			if len(b) == 0 {
				return nil, bad("tag %q: value %d is empty (null is written null)", pc.Name, j)
			}
			v, err := TagValueFromPB(b)
			if err != nil {
				return nil, fmt.Errorf("tag %q: %w", pc.Name, err)
			}
			c.Values[j] = v
		}
		f[i] = c
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// TagsToPB encodes per-row tags. A row whose tags are the previous row's
// map ([engine.Tags.Same]: a batch's rows often share one), or a map of
// the same plain values (strings, numbers, bools, nulls of the same Go
// types: copies of one, as a batch's metadata holds them), shares its
// bytes: a JSON encoding a row was most of the time of a reply with tags.
func TagsToPB(tags []engine.Tags) ([][]byte, error) {
	out := make([][]byte, len(tags))
	for i, t := range tags {
		if i > 0 && t != nil && (t.Same(tags[i-1]) || samePlain(t, tags[i-1])) {
			out[i] = out[i-1]
			continue
		}
		b, err := JSONToPB(t)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// samePlain reports whether a and b hold the same keys with equal values
// of the same plain types, which encode alike; false for anything else
// (nested values, other types), which is then encoded on its own.
func samePlain(a, b engine.Tags) bool {
	if len(a) != len(b) || b == nil {
		return false
	}
	for k, va := range a {
		vb, ok := b[k]
		if !ok {
			return false
		}
		switch x := va.(type) {
		case float64:
			// Bits, not ==: 0 and -0 encode differently. (A NaN never
			// gets here: its row's encoding fails.)
			if y, ok := vb.(float64); !ok || math.Float64bits(x) != math.Float64bits(y) {
				return false
			}
		case string, int64, int, bool, nil:
			if va != vb { // the same dynamic type and value
				return false
			}
		default:
			return false
		}
	}
	return true
}

// TagsFromPB decodes per-row tags, each row's a map of its own. A batch
// often gives every row the same tags: a row whose bytes equal the
// previous row's gets a copy of its tags rather than a second decode (a
// JSON decoder a row was most of a tagged put's server time).
func TagsFromPB(bs [][]byte) ([]engine.Tags, error) { return tagsFromPB(bs, false) }

// TagsFromPBShared is TagsFromPB for a reader that never changes the maps
// (the controller, which replaces a row's tags rather than change them):
// rows with equal bytes share one map.
func TagsFromPBShared(bs [][]byte) ([]engine.Tags, error) { return tagsFromPB(bs, true) }

func tagsFromPB(bs [][]byte, share bool) ([]engine.Tags, error) {
	out := make([]engine.Tags, len(bs))
	for i, b := range bs {
		if i > 0 && out[i-1] != nil && bytes.Equal(b, bs[i-1]) {
			if out[i] = out[i-1]; !share {
				out[i] = out[i].Clone()
			}
			continue
		}
		m, err := JSONFromPB(b)
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", i, err)
		}
		out[i] = m
	}
	return out, nil
}

// SchemaToPB encodes a field schema.
func SchemaToPB(s engine.FieldSchema) *wirepb.FieldSchema {
	p := &wirepb.FieldSchema{Dtype: DTypeToPB(s.DType), Kind: KindToPB(s.Kind)}
	if s.Kind == engine.Dense {
		p.Shape = ShapeToPB(s.Shape)
		if s.Shape == nil {
			p.Shape = &wirepb.Shape{}
		}
	}
	for _, sh := range s.Shapes {
		p.Shapes = append(p.Shapes, ShapeToPB(sh))
	}
	return p
}

// SchemaFromPB decodes a field schema.
func SchemaFromPB(p *wirepb.FieldSchema) (engine.FieldSchema, error) {
	var s engine.FieldSchema
	var err error
	if p == nil {
		return s, nil
	}
	if s.DType, err = DTypeFromPB(p.Dtype); err != nil {
		return s, err
	}
	if s.Kind, err = KindFromPB(p.Kind); err != nil {
		return s, err
	}
	if s.Kind == engine.Dense {
		if s.Shape, err = ShapeFromPB(p.Shape); err != nil {
			return s, err
		}
		if s.Shape == nil {
			s.Shape = engine.Shape{}
		}
	}
	if err := CheckCount("shapes", len(p.Shapes)); err != nil {
		return s, err
	}
	if len(p.Shapes) > 0 {
		s.Shapes = make([]engine.Shape, len(p.Shapes))
		for i, sh := range p.Shapes {
			if s.Shapes[i], err = ShapeFromPB(sh); err != nil {
				return s, err
			}
		}
	}
	return s, nil
}

// MetaToPB encodes a BatchMeta.
func MetaToPB(m *engine.BatchMeta) (*wirepb.BatchMeta, error) {
	if m == nil {
		return &wirepb.BatchMeta{}, nil
	}
	p := &wirepb.BatchMeta{Indexes: m.Indexes, Partitions: m.Partitions, Ready: m.Ready}
	if m.Keys != nil {
		p.HasKeys, p.Keys = true, m.Keys
	}
	var err error
	if p.Tags, err = TagsToPB(m.Tags); err != nil {
		return nil, err
	}
	if len(m.Schema) > 0 {
		p.Schema = make(map[string]*wirepb.FieldSchema, len(m.Schema))
		for k, s := range m.Schema {
			p.Schema[k] = SchemaToPB(s)
		}
	}
	if len(m.Cells) > 0 {
		p.Cells = make(map[string]*wirepb.Addrs, len(m.Cells))
		for k, c := range m.Cells {
			p.Cells[k] = AddrsToPB(c)
		}
	}
	if p.Extra, err = JSONToPB(m.Extra); err != nil {
		return nil, err
	}
	return p, nil
}

// MetaFromPB decodes and validates a BatchMeta.
func MetaFromPB(p *wirepb.BatchMeta) (*engine.BatchMeta, error) {
	if p == nil {
		return &engine.BatchMeta{}, nil
	}
	if err := CheckCount("rows", len(p.Indexes)); err != nil {
		return nil, err
	}
	m := &engine.BatchMeta{Indexes: p.Indexes, Partitions: p.Partitions, Ready: p.Ready}
	if m.Indexes == nil {
		m.Indexes = []uint64{}
	}
	if m.Partitions == nil {
		m.Partitions = []string{}
	}
	if m.Ready == nil {
		m.Ready = []bool{}
	}
	if p.HasKeys {
		m.Keys = p.Keys
		if m.Keys == nil {
			m.Keys = []string{}
		}
	}
	var err error
	if m.Tags, err = TagsFromPB(p.Tags); err != nil {
		return nil, err
	}
	if len(p.Schema) > 0 {
		m.Schema = make(map[string]engine.FieldSchema, len(p.Schema))
		for k, s := range p.Schema {
			if m.Schema[k], err = SchemaFromPB(s); err != nil {
				return nil, fmt.Errorf("field %q: %w", k, err)
			}
		}
	} else {
		m.Schema = map[string]engine.FieldSchema{}
	}
	if len(p.Cells) > 0 {
		m.Cells = make(map[string][]engine.CellLoc, len(p.Cells))
		for k, c := range p.Cells {
			if m.Cells[k], err = AddrsFromPB(c); err != nil {
				return nil, fmt.Errorf("cells of field %q: %w", k, err)
			}
		}
	} else {
		m.Cells = map[string][]engine.CellLoc{}
	}
	if m.Extra, err = JSONFromPB(p.Extra); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// CommitFieldsToPB encodes the fields of a commit (see
// [CommitFieldsFromPB]).
func CommitFieldsToPB(fields []engine.CommitField) []*wirepb.CommitField {
	out := make([]*wirepb.CommitField, len(fields))
	for i, f := range fields {
		cf := &wirepb.CommitField{Name: f.Name, Dtype: DTypeToPB(f.DType), Kind: KindToPB(f.Kind)}
		switch f.Kind {
		case engine.Dense:
			cf.Shape = ShapeToPB(f.Shape)
		case engine.Ragged:
			cf.Shapes = make([]*wirepb.Shape, len(f.Shapes))
			for j, s := range f.Shapes {
				cf.Shapes[j] = ShapeToPB(s)
			}
		}
		switch {
		case f.Runs != nil:
			cf.HasLocs, cf.Locs = true, RunsToPB(f.Runs)
		case f.Locs != nil:
			cf.HasLocs, cf.Locs = true, AddrsToPB(f.Locs)
		}
		out[i] = cf
	}
	return out
}

// CommitFieldsFromPB decodes the fields of a commit of n rows: ragged
// shapes and per-cell locations must have one entry per row; locations in
// runs stay runs (a column slice costs one entry), and the caller checks
// that the runs hold n cells.
func CommitFieldsFromPB(fs []*wirepb.CommitField, n int) ([]engine.CommitField, error) {
	out := make([]engine.CommitField, len(fs))
	for i, f := range fs {
		cf, err := commitFieldFromPB(f, n)
		if err != nil {
			return nil, fmt.Errorf("commit field %d (%q): %w", i, f.GetName(), err)
		}
		out[i] = cf
	}
	return out, nil
}

func commitFieldFromPB(f *wirepb.CommitField, n int) (engine.CommitField, error) {
	cf := engine.CommitField{Name: f.GetName()}
	var err error
	if cf.DType, err = DTypeFromPB(f.GetDtype()); err != nil {
		return cf, err
	}
	if cf.Kind, err = KindFromPB(f.GetKind()); err != nil {
		return cf, err
	}
	shapes := f.GetShapes()
	switch cf.Kind {
	case engine.Dense:
		if cf.Shape, err = ShapeFromPB(f.GetShape()); err != nil {
			return cf, err
		}
	case engine.Ragged:
		if len(shapes) != n {
			return cf, fmt.Errorf("ragged field has %d shapes for %d rows: %w", len(shapes), n, engine.ErrInvalid)
		}
		cf.Shapes = make([]engine.Shape, n)
		for i, sh := range shapes {
			if cf.Shapes[i], err = ShapeFromPB(sh); err != nil {
				return cf, fmt.Errorf("row %d: %w", i, err)
			}
		}
	}
	if cf.Kind != engine.Ragged && len(shapes) != 0 {
		return cf, fmt.Errorf("%v field carries %d per-row shapes: %w", cf.Kind, len(shapes), engine.ErrInvalid)
	}
	locs := f.GetLocs()
	switch {
	case f.GetHasLocs():
		// Runs of equal cells stay runs: a column slice costs one entry.
		runs, ok, err := RunsFromPB(locs)
		if err != nil {
			return cf, err
		}
		if ok {
			cf.Runs = runs
			return cf, nil // checkFields counts the runs' cells
		}
		if cf.Locs, err = AddrsFromPB(locs); err != nil {
			return cf, err
		}
		if len(cf.Locs) != n {
			return cf, fmt.Errorf("%d locations for %d rows: %w", len(cf.Locs), n, engine.ErrInvalid)
		}
	case len(locs.GetOffset())+len(locs.GetUnit())+len(locs.GetSegment())+len(locs.GetGen())+len(locs.GetLen()) > 0:
		return cf, fmt.Errorf("locations without has_locs: %w", engine.ErrInvalid)
	}
	return cf, nil
}

// SamplerSpecToPB converts a sampler spec; the zero spec is nil (absent).
func SamplerSpecToPB(s engine.SamplerSpec) *wirepb.SamplerSpec {
	if s.IsZero() {
		return nil
	}
	return &wirepb.SamplerSpec{Name: s.Name, N: int64(s.N), DpSize: int64(s.DPSize)}
}

// SamplerSpecFromPB converts a sampler spec from the wire (nil: the zero
// spec). Values out of int's range saturate; the controller refuses them
// as out of range.
func SamplerSpecFromPB(p *wirepb.SamplerSpec) engine.SamplerSpec {
	if p == nil {
		return engine.SamplerSpec{}
	}
	clamp := func(v int64) int { return int(max(min(v, 1<<31), -1)) }
	return engine.SamplerSpec{Name: p.Name, N: clamp(p.N), DPSize: clamp(p.DpSize)}
}
