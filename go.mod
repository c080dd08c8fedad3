module github.com/tqgo/tq

go 1.26.8

require (
	github.com/google/btree v1.1.3
	github.com/google/go-cmp v0.7.0
	golang.org/x/sys v0.50.0
)

require google.golang.org/protobuf v1.36.12

require (
	github.com/cespare/xxhash/v2 v2.3.0
	gopkg.in/yaml.v3 v3.0.1
)
