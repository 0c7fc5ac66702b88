# Medius: the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BUF            := go run github.com/bufbuild/buf/cmd/buf@v1.75.0
GOOGLEAPIS_MOD := github.com/grpc-ecosystem/grpc-gateway@v1.16.0
BIN            := bin
SERVICES       := mediator job-processor job-worker service-registry
# Deployment checks (compose, kustomize, traces, metrics) and the image healthcheck.
DEPLOY_PKGS    := ./deploy/deploytest/... ./deploy/healthcheck/...
GO_TEST_FLAGS  ?= -race -count=1 -timeout 25m
# What the binaries report as their version (logs, /v1/openapi.json).
VERSION        ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS        := -X main.version=$(VERSION)
# Packages apt installs when their command is missing (command:package); a
# package without a command is named by a file it installs (an absolute
# path, globs allowed).
TOOLS          := ffmpeg:ffmpeg ffprobe:ffmpeg tesseract:tesseract-ocr tesseract:tesseract-ocr-eng pocketsphinx_continuous:pocketsphinx pocketsphinx_continuous:pocketsphinx-en-us espeak-ng:espeak-ng \
                  /usr/lib/python3/dist-packages/cv2*:python3-opencv /usr/share/opencv4/haarcascades/haarcascade_frontalface_alt2.xml:opencv-data

.PHONY: help run test build generate check-generated lint-proto deps tools clean bench

help:
	@echo "make run       build and start the whole platform locally (embedded NATS + etcd)"
	@echo "make test      run every test (race detector on), installing what is missing"
	@echo "make build     build the binaries into ./$(BIN)"
	@echo "make generate  regenerate Go code and OpenAPI from proto/"

# tools installs the media tools with apt when missing and running as root;
# otherwise it names exactly what to install.
tools:
	@missing=""; for t in $(TOOLS); do cmd=$${t%%:*}; pkg=$${t##*:}; \
	  command -v $$cmd >/dev/null || ls -d $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// }" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

deps:
	go mod download -C pkg
	go mod download -C deploy/deploytest
	@for m in cmd/medius $(addprefix services/,$(SERVICES)); do go mod download -C $$m; done

build: deps
	@mkdir -p $(BIN)
	go build -ldflags "$(LDFLAGS)" -o $(BIN)/medius ./cmd/medius
	@for s in $(SERVICES); do go build -ldflags "$(LDFLAGS)" -o $(BIN)/$$s ./services/$$s || exit 1; done

run: tools build
	./$(BIN)/medius dev --bin-dir $(BIN) $(RUN_ARGS)

test: tools deps check-generated
	go vet ./pkg/... ./cmd/medius/... $(addprefix ./services/,$(addsuffix /...,$(SERVICES))) $(DEPLOY_PKGS)
	go test $(GO_TEST_FLAGS) ./pkg/... ./cmd/medius/... $(addprefix ./services/,$(addsuffix /...,$(SERVICES))) $(DEPLOY_PKGS)

# proto/third_party holds google/api/{annotations,http}.proto copied from the
# grpc-gateway v1 Go module; it is not committed.
proto/third_party/googleapis/google/api/annotations.proto:
	@dir=$$(GOWORK=off go mod download -json $(GOOGLEAPIS_MOD) | sed -n 's/.*"Dir": "\(.*\)",/\1/p'); \
	mkdir -p proto/third_party/googleapis/google/api && \
	cp $$dir/third_party/googleapis/google/api/{annotations,http}.proto proto/third_party/googleapis/google/api/ && \
	chmod 644 proto/third_party/googleapis/google/api/*.proto

lint-proto: proto/third_party/googleapis/google/api/annotations.proto
	cd proto && $(BUF) lint --path medius

generate: lint-proto
	mkdir -p pkg/api && find pkg/api -name '*.pb.go' -o -name '*.pb.gw.go' -o -name '*.swagger.json' | xargs rm -f
	$(BUF) generate proto --template proto/buf.gen.yaml --path proto/medius

# check-generated regenerates into a temporary directory and fails when the
# committed code differs from what the protos produce.
check-generated: lint-proto
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(BUF) generate proto --template proto/buf.gen.yaml --path proto/medius -o $$tmp && \
	if ! diff -r --exclude=embed.go $$tmp/pkg/api pkg/api >/dev/null; then \
	  diff -r --exclude=embed.go $$tmp/pkg/api pkg/api | head -20; \
	  echo "generated code in pkg/api is stale: run 'make generate' and commit" >&2; exit 1; \
	fi; echo "generated code is up to date"

# bench runs the benchmarks; figures go in closing notes, never in assertions.
# The platform benchmark (cmd/medius BenchmarkPlatform) runs last: its RESULT
# line ends the output.
bench: tools deps
	go test -run '^$$' -bench . -benchtime 20x ./pkg/... $(addprefix ./services/,$(addsuffix /...,$(SERVICES)))
	mkdir -p $(BIN); set -o pipefail; go test -run '^$$' -bench . -benchtime 20x -timeout 30m ./cmd/medius/... | tee $(BIN)/bench-platform.txt
	@grep '^RESULT' $(BIN)/bench-platform.txt | tail -1

clean:
	rm -rf $(BIN) proto/third_party
