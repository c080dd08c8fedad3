package engine

import (
	"errors"
	"fmt"
	"testing"
)

func TestOpError(t *testing.T) {
	cause := fmt.Errorf("key %q: %w", "k1", ErrNotFound)
	tests := []struct {
		name string
		err  *OpError
		want string
	}{
		{"all parts", &OpError{Op: "read", Transport: "shm", Peer: "unit 3", Err: cause}, `read shm unit 3: key "k1": engine: not found`},
		{"op only", &OpError{Op: "fetch", Err: ErrClosed}, "fetch: engine: closed"},
		{"no cause", &OpError{Op: "put"}, "put: <nil>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	var err error = &OpError{Op: "read", Err: cause}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("errors.Is(%v, ErrNotFound): got false, want true", err)
	}
	var op *OpError
	if !errors.As(fmt.Errorf("wrapped: %w", err), &op) || op.Op != "read" {
		t.Errorf("errors.As: got %v, want the OpError", op)
	}
}

func TestReadySliceAndCellLoc(t *testing.T) {
	var _ ReadySet = ReadySlice(nil)
	r := ReadySlice{1, 4, 9}
	var got []uint64
	r.Ascend(func(i uint64) bool {
		got = append(got, i)
		return i < 4
	})
	if r.Len() != 3 || len(got) != 2 || got[1] != 4 {
		t.Errorf("got Len %d and visits %v, want 3 and [1 4]", r.Len(), got)
	}
	if (CellLoc{}).Stored() {
		t.Error("zero CellLoc: got Stored")
	}
	if !(CellLoc{Unit: 1}).Stored() {
		t.Error("CellLoc with a unit and no bytes: got not Stored, want Stored")
	}
}
