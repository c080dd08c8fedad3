package bench

import (
	"testing"

	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) {
	ChildMain() // the writer and reader processes of the flow benchmarks
	leaktest.Main(m)
}
