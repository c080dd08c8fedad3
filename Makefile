# TQ build targets. `make test` is what CI runs (through .ci/run).
# GO: the go command on PATH, else the one README installs at
# /usr/local/go (a fresh machine's PATH lacks /usr/local/go/bin).
GO        ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
GOFMT     ?= $(shell $(GO) env GOROOT)/bin/gofmt
GOFLAGS   ?=
TESTFLAGS ?=
PKGS      := ./...
BENCHTIME ?= 3x
FUZZTIME  ?= 30s
# TAGS: the RDMA transport's cgo build (transport/rdma, csrc/) needs the
# verbs headers (apt-get install libibverbs-dev); without them it builds
# the stub that answers ErrNotSupported.
RDMA      := $(shell test -f /usr/include/infiniband/verbs.h && echo rdma)
TAGS      ?= $(RDMA)

.PHONY: test-rdma-hw all build test testrace testnocgo lint bench benchgo results demo fuzz soak clean tidy generate pygen pycheck pytest

all: build

build:
	$(GO) build -tags '$(TAGS)' $(PKGS)
	$(GO) build -tags '$(TAGS)' -o bin/tq ./cmd/tq

# test: lint, the full suite with the race detector and invariant checks,
# a pure-Go (no cgo) build and test run, and the Python client's suite.
test: lint testrace testnocgo pytest

testrace:
	@test -n "$(RDMA)" || echo "make: no /usr/include/infiniband/verbs.h: the RDMA transport is tested as its stub (apt-get install libibverbs-dev)"
	$(GO) test -race -tags 'invariants $(TAGS)' -count=1 -timeout 8m $(TESTFLAGS) $(PKGS)

testnocgo:
	CGO_ENABLED=0 $(GO) build $(PKGS)
	CGO_ENABLED=0 $(GO) build -tags rdma $(PKGS)
	CGO_ENABLED=0 $(GO) test -short -count=1 -timeout 8m $(TESTFLAGS) ./engine/... ./transport/rdma/...

lint:
	@out=$$($(GOFMT) -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# test-rdma-hw: the RDMA transport's tests and benchmarks on a real device
# (make test-rdma-hw RDMA_DEVICE=mlx5_0); without one named, or when the
# host lacks it, they skip.
RDMA_DEVICE ?=
test-rdma-hw:
	@if [ -z "$(RDMA_DEVICE)" ]; then echo "test-rdma-hw: no RDMA_DEVICE named (see ibv_devices): skipped"; exit 0; fi; \
	set -e; \
	TQ_RDMA_TEST_DEVICE=$(RDMA_DEVICE) $(GO) test -tags rdma -count=1 -v -run 'TestConformance$$|TestUnitRestart|TestRegisteredBuffers' ./transport/rdma; \
	TQ_RDMA_TEST_DEVICE=$(RDMA_DEVICE) $(GO) test -tags rdma -run '^$$' -bench 'SmallWorkload' -count 3 ./transport/rdma; \
	$(GO) build -tags rdma -o bin/tq ./cmd/tq; \
	TQ_BENCH_RDMA_DEVICE=$(RDMA_DEVICE) bin/tq bench --transport rdma,tcp --workload small

# bench: the reference flow (`tq bench`) on the small workload, every
# transport and case, a couple of iterations: about a minute.
BENCHITERS ?= 2
bench:
	$(GO) build -tags '$(TAGS)' -o bin/tq ./cmd/tq
	bin/tq bench --workload small --iters $(BENCHITERS)

# benchgo: a quick pass over every `go test` benchmark. For real numbers use
# `go test -bench . -count 6 ./pkg | tee new.txt` and benchstat.
benchgo:
	$(GO) test -tags '$(TAGS)' -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 20m $(PKGS)

# results: run `tq bench` on every transport, workload and case and
# regenerate bench/RESULTS.md and the chart next to it (commit both).
RESULTITERS ?= 3
results:
	$(GO) build -tags '$(TAGS)' -o bin/tq ./cmd/tq
	bin/tq bench --transport all --workload all --case all --iters $(RESULTITERS) \
		--markdown bench/RESULTS.md --plot bench/results.png

demo:
	$(GO) run ./cmd/tq demo

# fuzz: run every fuzz target for FUZZTIME each (make test runs only their
# seed corpora).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# soak: the fault matrix (cmd/tq TestFaultMatrix: real processes killed
# and restarted at random, then every guarantee checked) run seed after
# seed for SOAK, each injecting faults for SOAKSEEDTIME. Seeds count up
# from SOAKSEED (default: the clock); a failing seed is named in the
# output and reruns with -faults.seeds N.
SOAK         ?= 10m
SOAKSEEDTIME ?= 20s
SOAKSEED     ?= $$(date +%s)
soak:
	$(GO) test -race -tags 'invariants $(TAGS)' -count=1 -timeout 0 -run '^TestFaultMatrix$$' -v ./cmd/tq \
		-faults.soak $(SOAK) -faults.duration $(SOAKSEEDTIME) -faults.seeds $(SOAKSEED)

# generate: regenerate the protobuf code in wire/wirepb (committed). Needs
# protoc (apt-get install protobuf-compiler); installs protoc-gen-go and
# protoc-gen-go-vtproto (the fast marshal code, wire/codec.go) at the
# versions go.mod pins.
PROTOC_GEN_GO = $(shell $(GO) env GOPATH)/bin/protoc-gen-go
PROTOC_GEN_VT = $(shell $(GO) env GOPATH)/bin/protoc-gen-go-vtproto
generate:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$$($(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
	$(GO) install github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@$$($(GO) list -m -f '{{.Version}}' github.com/planetscale/vtprotobuf)
	protoc --plugin=$(PROTOC_GEN_GO) --go_out=. --go_opt=module=github.com/tqgo/tq \
		--plugin=$(PROTOC_GEN_VT) --go-vtproto_out=. --go-vtproto_opt=module=github.com/tqgo/tq,features=marshal+size \
		-I wire/proto wire/proto/*.proto

# The Python client (python/): its message code is generated from
# wire/proto by protoc (apt-get install protobuf-compiler) and committed;
# pycheck (part of make test) fails when it is not in step with wire/proto.
# pytest runs python/tests with Debian's python3 against a tq serve its
# fixture starts (apt-get install python3-numpy python3-protobuf
# python3-pytest python3-zmq; python3-pytest-timeout fails a test that
# hangs, after 300 s, with its stacks, rather than stalling make test).
PYTHON   ?= /usr/bin/python3
PYTIMEOUT = $(shell $(PYTHON) -c 'import pytest_timeout' 2>/dev/null && echo --timeout=300)
PYPB     := python/tq/_pb
PYPROTOS := wire/proto/common.proto wire/proto/control.proto wire/proto/data.proto wire/proto/cluster.proto
pygen:
	@mkdir -p $(PYPB)
	protoc --python_out=$(PYPB) -I wire/proto $(PYPROTOS)
	sed -i 's/^import \(.*_pb2\) as/from . import \1 as/' $(PYPB)/*_pb2.py

pycheck:
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	protoc --python_out=$$tmp -I wire/proto $(PYPROTOS) && \
	sed -i 's/^import \(.*_pb2\) as/from . import \1 as/' $$tmp/*_pb2.py && \
	for f in $$tmp/*_pb2.py; do \
		cmp -s $$f $(PYPB)/$$(basename $$f) || { echo "$(PYPB)/$$(basename $$f) is not in step with wire/proto: run make pygen"; exit 1; }; \
	done

pytest: pycheck
	$(GO) build -tags '$(TAGS)' -o bin/tq ./cmd/tq
	$(GO) build -o bin/tqxlang ./internal/xlang
	@# In a temporary directory of their own, removed when they pass (kept, and named, when they fail):
	@# torch's DataLoader workers leave multiprocessing's pymp-* directories behind.
	tmp=$$(mktemp -d /tmp/tqpy.XXXXXX) && rc=0 && \
	(cd python && TMPDIR=$$tmp TQ_BIN=$(CURDIR)/bin/tq TQ_XLANG=$(CURDIR)/bin/tqxlang $(PYTHON) -m pytest -q -p no:cacheprovider $(PYTIMEOUT) tests) || rc=$$?; \
	if [ $$rc = 0 ]; then rm -rf $$tmp; else echo "the Python tests' temporary files are in $$tmp"; fi; exit $$rc

tidy:
	$(GO) mod tidy

clean:
	rm -rf bin
