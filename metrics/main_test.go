package metrics_test

import (
	"testing"

	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m) }
