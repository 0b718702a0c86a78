# berth: `make run` starts berthd, `make test` runs every test, `make bench` prints figures.
# Each installs the Debian packages it needs first (as root, or through sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BERTHD_ARGS ?=
BENCH_ARGS ?=

# protoc for k8s-cri's generated code, libseccomp for the executor, a C toolchain for ring/zstd.
BUILD_PACKAGES := protobuf-compiler libseccomp-dev pkg-config gcc make
# What the end-to-end tests drive beyond the build: busybox for test images (and ping), Debian's
# registry, openssl for the token-auth registry's key and certificate, the CNI plugins, and the
# tools they and the tests call (ip, iptables for portmap, nsenter), and skopeo, which pushes the
# installer image's OCI layout (make image).
TEST_PACKAGES := $(BUILD_PACKAGES) busybox-static docker-registry openssl \
	containernetworking-plugins iproute2 iptables util-linux skopeo

.PHONY: all build run test test-host test-node bench soak fuzz lint deps-build deps-test deps-node check-cargo clean dist image test-deploy manifests node-install

all: build

check-cargo:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }

deps-build: check-cargo
	@./.ci/apt-ensure $(BUILD_PACKAGES)

deps-test: check-cargo
	@./.ci/apt-ensure $(TEST_PACKAGES)

build: deps-build
	$(CARGO) build --release --bin berthd

# Pods need CNI plugins (Debian puts them in /usr/lib/cni, one of berth's default bin_dirs).
RUN_PACKAGES := $(BUILD_PACKAGES) containernetworking-plugins iproute2 iptables

# Runs berthd in the foreground with /etc/berth/config.toml if present, else the defaults.
# Needs root: it creates /run/berth and /var/lib/berth. Ctrl-C stops it cleanly.
run: build
	@./.ci/apt-ensure $(RUN_PACKAGES)
	$(SUDO) ./target/release/berthd $(BERTHD_ARGS)

lint: deps-build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests need nothing special; e2e tests start real berthd processes and must run as root.
# A test that cannot run here records itself in $(SKIPS) (berth_e2e::skip); the count and the
# list are printed at the end. Under CI (`CI` set, as .ci/run does) a skip fails its test.
SKIPS := $(CURDIR)/target/e2e-skips.txt
test: test-host test-deploy test-node

test-host: deps-test lint
	$(CARGO) build --bin berthd
	@rm -f $(SKIPS)
	$(SUDO) env "PATH=$$PATH" BERTH_E2E_SKIPS=$(SKIPS) $(CARGO) test --workspace
	@n=$$(cat $(SKIPS) 2>/dev/null | wc -l); echo "make test: $$n tests skipped"; \
	  [ "$$n" = 0 ] || cat $(SKIPS)

# The Helm chart and the plain manifests (deploy/test/): rendered with Helm's own library (the
# helm-python-sdk package) for every values file in deploy/test/values, linted, validated strictly
# against the supported Kubernetes versions' schemas (kubernetes-validate), each rendered
# config.toml checked by `berthd config check`, and deploy/kubernetes/berth.yaml compared with
# the default render. The pinned packages go in a venv under target/ (python3-venv).
test-deploy: deps-build
	@./.ci/apt-ensure python3-venv
	$(CARGO) build --bin berthd
	BERTHD=$(CURDIR)/target/debug/berthd ./deploy/test/run

# Rewrites deploy/kubernetes/berth.yaml from the chart's defaults (test-deploy fails while stale).
manifests:
	@./.ci/apt-ensure python3-venv
	./deploy/test/render-manifests

# The node lane (e2e/node/): the e2e suites that cgroup v2 and the systemd driver change, run
# inside a Debian 12 VM (systemd as PID 1, pure cgroup v2, AppArmor) under qemu, once per cgroup
# driver. The VM image is built from Debian packages and cached in /var/cache/berth-node.
NODE_PACKAGES := qemu-system-x86 debootstrap e2fsprogs
deps-node: deps-test
	@./.ci/apt-ensure $(NODE_PACKAGES)

test-node: deps-node
	$(SUDO) env "PATH=$$PATH" ./e2e/node/lane.sh

# A hand install of `make dist`'s tarball on the node lane's VM, with the install.sh the Helm
# chart's DaemonSet runs: berthd under systemd, answering, reinstalled, reloaded, uninstalled.
node-install: deps-node dist
	$(SUDO) env "PATH=$$PATH" ./e2e/node/try-install.sh $(DIST)/berth-$(VERSION)-linux-$(ARCH).tar.gz

bench: deps-test
	$(CARGO) build --release --workspace --bins
	$(SUDO) env BERTHD=$(CURDIR)/target/release/berthd ./target/release/berth-bench $(BENCH_ARGS)

# The soak (e2e/src/soak.rs): pod lifecycles over the CRI socket while berthd, monitors and
# containers are SIGKILLed at seeded random moments; prints the seed and the leak table.
# SOAK_ARGS: --lifecycles N (1000), --in-flight N (8), --seed N, --fault-every-ms N (700).
SOAK_ARGS ?=
soak: deps-test
	$(CARGO) build --bin berthd --bin berth-soak --bin berth-cni-gate
	$(SUDO) env "PATH=$$PATH" ./target/debug/berth-soak $(SOAK_ARGS)

# Coverage-guided fuzzing (fuzz/: its own crate, outside the workspace, built into fuzz/target)
# of every parser of outside input, on the stable toolchain: builds all targets, then runs each
# for FUZZ_SECONDS from its seeds in fuzz/corpus/. A crash fails it, naming the input it saved
# (outside the tree). Not part of `make test`. libFuzzer itself is C++, hence g++.
FUZZ_SECONDS ?= 10
fuzz: deps-build
	@./.ci/apt-ensure g++
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) ./fuzz/run

# The release: target/dist/berth-<version>-linux-<arch>.tar.gz (berthd, install.sh, the unit,
# the default config, the Helm chart, the operator's guide, SHA256SUMS), reproducible; a hand
# install and the installer image both use what it holds (deploy/dist.sh).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH := $(shell uname -m | sed 's/^x86_64$$/amd64/; s/^aarch64$$/arm64/')
DIST := $(CURDIR)/target/dist
dist: build
	./deploy/dist.sh target/release/berthd $(DIST)

# The installer image, built from the release directory by berth's own image code (no Docker
# daemon; the same inputs give the same digest) as an OCI image layout in target/installer-image.
# With REGISTRY set it is pushed to $(REGISTRY)/berth-installer:$(TAG) with skopeo, which takes
# the credentials of `skopeo login` (SKOPEO_ARGS="--dest-tls-verify=false" for a plain-HTTP one).
REGISTRY ?=
TAG ?= $(VERSION)
SKOPEO_ARGS ?=
IMAGE_LAYOUT := $(CURDIR)/target/installer-image
image: dist
	$(CARGO) build --release -p berth-e2e --bin berth-installer-image
	rm -rf $(IMAGE_LAYOUT)
	./target/release/berth-installer-image $(DIST)/berth-$(VERSION)-linux-$(ARCH) $(IMAGE_LAYOUT) $(TAG)
	@if [ -n "$(REGISTRY)" ]; then \
	  ./.ci/apt-ensure skopeo && \
	  skopeo copy --preserve-digests $(SKOPEO_ARGS) oci:$(IMAGE_LAYOUT):$(TAG) docker://$(REGISTRY)/berth-installer:$(TAG); \
	fi

clean:
	$(CARGO) clean
