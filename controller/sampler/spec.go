package sampler

import (
	"fmt"
	"slices"
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

// ParseSpec reads a sampler spec's text form: "sequential", "rank-aware",
// "grpo:N", "seqlen:N:DP" or "token-budget:N:DP", the spellings tq serve's
// -h and the README use, which its errors list. The engine's names
// ("rank_aware", "seqlen_balanced", "token_budget"; see [engine.SamplerSpec]),
// and any of them with dashes for underscores, are accepted too. It checks
// the spec the way [New] does.
func ParseSpec(s string) (engine.SamplerSpec, error) {
	parts := strings.Split(s, ":")
	name := strings.ReplaceAll(parts[0], "-", "_")
	if name == "seqlen" {
		name = engine.SamplerSeqlenBalanced
	}
	i := slices.IndexFunc(specForms, func(f specForm) bool { return f.name == name })
	if i < 0 {
		forms := make([]string, len(specForms))
		for i, f := range specForms {
			forms[i] = f.form
		}
		return engine.SamplerSpec{}, fmt.Errorf("sampler %q: want %s or %s: %w", s, strings.Join(forms[:len(forms)-1], ", "), forms[len(forms)-1], engine.ErrInvalid)
	}
	if f := specForms[i]; len(parts)-1 != f.params {
		spelled, _, _ := strings.Cut(f.form, ":")
		switch f.params {
		case 0:
			return engine.SamplerSpec{}, fmt.Errorf("sampler %q: %s takes no parameter, got %d: %w", s, spelled, len(parts)-1, engine.ErrInvalid)
		case 1:
			return engine.SamplerSpec{}, fmt.Errorf("sampler %q: %s takes 1 parameter (%s), got %d: %w", s, spelled, f.form, len(parts)-1, engine.ErrInvalid)
		default:
			return engine.SamplerSpec{}, fmt.Errorf("sampler %q: %s takes %d parameters (%s), got %d: %w", s, spelled, f.params, f.form, len(parts)-1, engine.ErrInvalid)
		}
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

// specForm is a sampler's text form as ParseSpec's errors list it.
type specForm struct {
	name   string // the engine's
	form   string // as tq serve's -h and the README spell it
	params int
}

var specForms = []specForm{
	{engine.SamplerSequential, "sequential", 0},
	{engine.SamplerRankAware, "rank-aware", 0},
	{engine.SamplerGRPO, "grpo:N", 1},
	{engine.SamplerSeqlenBalanced, "seqlen:N:DP", 2},
	{engine.SamplerTokenBudget, "token-budget:N:DP", 2},
}
