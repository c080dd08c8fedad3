package sampler

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tqgo/tq/engine"
)

// MaxSpecParam bounds a spec's group size and dp size (a request names
// them, and a sampler allocates by them).
const MaxSpecParam = 1 << 16

// New builds the built-in sampler spec names (see [engine.SamplerSpec]).
// An unknown name, a parameter the sampler does not take, or a parameter
// out of range is an error wrapping [engine.ErrInvalid] that names it.
func New(spec engine.SamplerSpec) (engine.Sampler, error) {
	s, _, err := build(spec)
	return s, err
}

// Canonical checks spec as [New] does and returns it with its defaults
// filled in (a group size and dp size of 0 are 1), so that specs naming
// the same sampler compare equal.
func Canonical(spec engine.SamplerSpec) (engine.SamplerSpec, error) {
	_, c, err := build(engine.SamplerSpec{Name: spec.Name, N: spec.N, DPSize: spec.DPSize})
	return c, err
}

func build(spec engine.SamplerSpec) (engine.Sampler, engine.SamplerSpec, error) {
	s, err := newSampler(spec)
	if err != nil {
		return nil, engine.SamplerSpec{}, err
	}
	return s, engine.SamplerSpec{Name: spec.Name, N: max(spec.N, 1), DPSize: max(spec.DPSize, 1)}, nil
}

func newSampler(spec engine.SamplerSpec) (engine.Sampler, error) {
	if spec.N < 0 || spec.DPSize < 0 {
		return nil, fmt.Errorf("sampler %q: negative group size %d or dp size %d: %w", spec.Name, spec.N, spec.DPSize, engine.ErrInvalid)
	}
	if spec.N > MaxSpecParam || spec.DPSize > MaxSpecParam {
		return nil, fmt.Errorf("sampler %q: group size %d or dp size %d above %d: %w", spec.Name, spec.N, spec.DPSize, MaxSpecParam, engine.ErrInvalid)
	}
	n, dp := max(spec.N, 1), max(spec.DPSize, 1)
	takes := func(group, ranks bool) error {
		if !group && spec.N > 1 {
			return fmt.Errorf("sampler %q takes no group size (got %d): %w", spec.Name, spec.N, engine.ErrInvalid)
		}
		if !ranks && spec.DPSize > 1 {
			return fmt.Errorf("sampler %q takes no dp size (got %d): %w", spec.Name, spec.DPSize, engine.ErrInvalid)
		}
		return nil
	}
	switch spec.Name {
	case engine.SamplerSequential:
		if err := takes(false, false); err != nil {
			return nil, err
		}
		return NewSequential(), nil
	case engine.SamplerRankAware:
		if err := takes(false, false); err != nil {
			return nil, err
		}
		return NewRankAware(), nil
	case engine.SamplerGRPO:
		if err := takes(true, false); err != nil {
			return nil, err
		}
		return NewGRPO(n)
	case engine.SamplerSeqlenBalanced:
		return NewSeqlenBalanced(n, dp)
	case engine.SamplerTokenBudget:
		return NewTokenBudget(n, dp)
	case "":
		return nil, fmt.Errorf("sampler spec without a name: %w", engine.ErrInvalid)
	}
	return nil, fmt.Errorf("sampler %q: unknown (want %s, %s, %s, %s or %s): %w", spec.Name,
		engine.SamplerSequential, engine.SamplerGRPO, engine.SamplerRankAware, engine.SamplerSeqlenBalanced,
		engine.SamplerTokenBudget, engine.ErrInvalid)
}

// ParseSpec reads a sampler spec's text form: "sequential", "rank_aware",
// "grpo:N", "seqlen_balanced:N:DP" or "token_budget:N:DP" (dashes for
// underscores, and "seqlen" for "seqlen_balanced", are accepted too). It
// checks the spec the way [New] does.
func ParseSpec(s string) (engine.SamplerSpec, error) {
	parts := strings.Split(s, ":")
	name := strings.ReplaceAll(parts[0], "-", "_")
	if name == "seqlen" {
		name = engine.SamplerSeqlenBalanced
	}
	want := map[string]int{
		engine.SamplerSequential: 0, engine.SamplerRankAware: 0, engine.SamplerGRPO: 1,
		engine.SamplerSeqlenBalanced: 2, engine.SamplerTokenBudget: 2,
	}
	w, ok := want[name]
	if !ok {
		return engine.SamplerSpec{}, fmt.Errorf("sampler %q: want sequential, rank_aware, grpo:N, seqlen_balanced:N:DP or token_budget:N:DP: %w", s, engine.ErrInvalid)
	}
	if len(parts)-1 != w {
		return engine.SamplerSpec{}, fmt.Errorf("sampler %q: %s takes %d parameters, got %d: %w", s, name, w, len(parts)-1, engine.ErrInvalid)
	}
	nums := make([]int, 2)
	for i, p := range parts[1:] {
		v, err := strconv.Atoi(p)
		if err != nil || v <= 0 {
			return engine.SamplerSpec{}, fmt.Errorf("sampler %q: parameter %q is not a positive number: %w", s, p, engine.ErrInvalid)
		}
		nums[i] = v
	}
	spec := engine.SamplerSpec{Name: name, N: nums[0], DPSize: nums[1]}
	if _, err := New(spec); err != nil {
		return engine.SamplerSpec{}, err
	}
	return spec, nil
}
