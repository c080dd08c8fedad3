package journal

import (
	"os"
	"testing"

	"github.com/tqgo/tq/internal/leaktest"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		os.Exit(killChild(dir)) // TestKilledProcessKeepsWaitedRecords's writer
	}
	leaktest.Main(m)
}
