package connset

import (
	"errors"
	"testing"
)

type conn struct {
	s      *Set[*conn]
	closed int
	err    error
}

func (c *conn) Close() error {
	c.closed++
	c.s.Remove(c) // as a transport's connection does
	return c.err
}

func TestSet(t *testing.T) {
	var s Set[*conn]
	boom := errors.New("boom")
	a, b := &conn{s: &s}, &conn{s: &s, err: boom}
	gone := &conn{s: &s}
	for _, c := range []*conn{a, b, gone} {
		if !s.Add(c) {
			t.Fatal("Add to an open set refused")
		}
	}
	s.Remove(gone)
	if err := s.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close = %v, want the connection's error", err)
	}
	if a.closed != 1 || b.closed != 1 || gone.closed != 0 {
		t.Fatalf("closed counts a=%d b=%d removed=%d, want 1 1 0", a.closed, b.closed, gone.closed)
	}
	if s.Add(&conn{s: &s}) {
		t.Fatal("Add after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if a.closed != 1 {
		t.Fatal("second Close closed a connection again")
	}
}
