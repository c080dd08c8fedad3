package main

import (
	"testing"

	"github.com/tqgo/tq/bench"
	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) {
	bench.ChildMain() // the writer and reader processes of `tq bench`
	leaktest.Main(m)
}
