package evloop

import (
	"testing"

	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }
