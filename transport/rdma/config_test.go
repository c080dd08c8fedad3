package rdma

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tqgo/tq/engine"
)

// The local ACK timeout is a 5-bit exponent and the retry count a 3-bit
// count in a queue pair's attributes: a device given more truncates them
// or refuses the queue pair with a bare EINVAL. A config with such values
// is refused before anything is opened, naming the field.
func TestConfigRefusesAckTimeoutAndRetryCntOutOfRange(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		says string // "": valid
	}{
		{"defaults", Config{}, ""},
		{"largest", Config{AckTimeout: 31, RetryCnt: 7}, ""},
		{"ack timeout", Config{AckTimeout: 32}, "ack timeout 32"},
		{"retry count", Config{RetryCnt: 8}, "retry count 8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.says == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), tc.says)

			tr := New(tc.cfg)
			defer tr.Close()
			_, err = tr.Dial(t.Context(), engine.PeerInfo{Addr: "tcp://127.0.0.1:1"})
			require.ErrorIs(t, err, engine.ErrInvalid)
			assert.Contains(t, err.Error(), tc.says)
		})
	}
}
