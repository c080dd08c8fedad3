//go:build cgo && rdma

package main

// With C in the binary (the RDMA shim), a crash inside C prints
// symbolized C frames next to the Go ones.
import _ "github.com/ianlancetaylor/cgosymbolizer"
