# litefs: a FUSE filesystem of replicated SQLite databases.
#
#   make demo    build, install what is missing, run a small cluster and show it working
#   make test    run every test (race detector on), then every fuzz target briefly, as CI does
#   make fuzz    run every fuzz target for FUZZTIME (10s) each
#   make bench   measure litefs against plain SQLite on this machine
#   make lint    go vet, gofmt and staticcheck

GO          ?= go
BIN         := bin
STATICCHECK := $(BIN)/staticcheck

.PHONY: all build deps consul etcd test fuzz bench demo lint clean

all: build

build:
	$(GO) build -o $(BIN)/litefs ./cmd/litefs

deps:
	@scripts/deps.sh

# The Consul agent the lease tests run against, built once and cached.
consul:
	@scripts/install-consul.sh >/dev/null

# The etcd server the etcd lease tests run against, fetched once and cached.
etcd:
	@scripts/install-etcd.sh >/dev/null

# Where the tests and benchmarks find them.
LEASE_ENV = LITEFS_CONSUL="$$(scripts/install-consul.sh 2>/dev/null | tail -n1)" LITEFS_ETCD="$$(scripts/install-etcd.sh 2>/dev/null | tail -n1)"

test: deps consul etcd
	@scripts/check-tree.sh
	$(GO) vet ./...
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	# -count=1: the tests in tests/ run a litefs binary they build, whose
	# sources the test cache does not see.
	$(LEASE_ENV) $(GO) test -race -count=1 -timeout 25m ./...
	@GO=$(GO) FUZZTIME=5s scripts/fuzz.sh

# Every fuzz target for FUZZTIME each, one at a time. A failing input is
# left in PKG/testdata/fuzz/TARGET/: fix the code and keep it in git.
FUZZTIME ?= 10s
fuzz:
	@GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

bench: deps consul etcd build
	$(LEASE_ENV) $(GO) run ./cmd/litefs-bench -litefs $(BIN)/litefs

demo: deps etcd build
	@scripts/demo.sh $(BIN)/litefs

$(STATICCHECK):
	GOBIN=$(abspath $(BIN)) $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: $(STATICCHECK)
	@scripts/check-tree.sh
	$(GO) vet ./...
	@unformatted="$$(gofmt -l .)"; if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
