// Package invariants switches on expensive self-checks in test builds.
// They are enabled by the `invariants` or `race` build tags and cost nothing
// otherwise: code guards them with `if invariants.Enabled { … }`, which the
// compiler removes when Enabled is the constant false.
package invariants
