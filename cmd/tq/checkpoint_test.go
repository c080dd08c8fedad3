package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A checkpoint saved with cells whose unit was gone says so: their reads
// fail after a load. The CLI used to print only "saved NAME".
func TestCheckpointSaysLostCells(t *testing.T) {
	assert.Empty(t, lostString(0))
	assert.Equal(t, "; 3 cells lost when it was saved (their unit was gone): reads of them fail", lostString(3))
}
