# hutch: set-up, demo, tests and benchmarks.
#
#   make demo    install what is needed, then show hutch running containers (tools/demo.py)
#   make test    install what is needed, then ruff and pytest
#   make bench   install what is needed, then time hutch against podman, crun and runc
#   make deps    only install: Debian packages (when missing) and the project virtualenv .venv
#   make lint    ruff check + ruff format --check      make format   ruff format
#   make clean   remove .venv and caches
#
# Everything runs from .venv/bin directly: `python3` may be a slow pyenv shim, and the base interpreter's
# site-packages may import things at start-up; the virtualenv sees neither.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.hutch-installed

# Debian packages the tests, the demo and the benchmarks use. APT_EXTRA adds more for one run.
APT_PACKAGES := python3 python3-venv busybox-static podman crun runc conmon netavark aardvark-dns \
	catatonit uidmap zstd iproute2 iptables nftables libseccomp2 util-linux gcc libc6-dev \
	docker-registry skopeo openssl apache2-utils
# The cgroup v2 tests boot this host's userspace in a QEMU guest on Debian's cloud kernel (tools/cgroup2_vm.py).
APT_PACKAGES += qemu-system-x86 linux-image-cloud-amd64
# The microVM backend: QEMU, mkfs.erofs for image disks, lz4 for the initramfs, musl-gcc for a small static
# guest agent (without it, gcc + libc6-dev's libc.a build a 10x larger one).
APT_PACKAGES += erofs-utils lz4 musl-tools
APT_EXTRA ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3

PYTHON ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: help deps apt-deps bytecode demo test bench lint format clean

help:
	@sed -n '3,9s/^# \{0,1\}//p' Makefile

deps: apt-deps $(STAMP)

# Installs only what is missing; `apt-get update` runs only then, so a second `make deps` is quick.
apt-deps:
	@missing=""; \
	for p in $(APT_PACKAGES) $(APT_EXTRA); do \
		st=$$(dpkg-query -W -f='$${db:Status-Abbrev}' "$$p" 2>/dev/null || true); \
		case "$$st" in ii*) ;; *) missing="$$missing $$p" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing Debian packages:$$missing"; \
		$(APT_GET) update -qq; \
		$(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi

# The virtualenv is made from the real interpreter behind `python3` (not a pyenv shim) and is rebuilt
# when pyproject.toml changes. PYTHON=/path/to/python3.11 overrides the choice.
$(STAMP): pyproject.toml | apt-deps
	@py="$(PYTHON)"; [ -n "$$py" ] || py=$$(python3 -c 'import sys; print(sys.executable)'); \
	"$$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "deps: $$py is older than Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }; \
	if ! [ -x $(VPY) ] || ! $(VPY) -c 'import sys' 2>/dev/null; then \
		rm -rf $(VENV); \
		echo "deps: creating $(VENV) from $$py"; \
		"$$py" -m venv $(VENV); \
	fi
	@echo "deps: pip install -e '.[test]' into $(VENV)"
	@PIP_DISABLE_PIP_VERSION_CHECK=1 $(VPY) -m pip install -q -e '.[test]'
	@touch $@
	@$(MAKE) --no-print-directory bytecode

# An editable install gets no .pyc files from pip, and PYTHONDONTWRITEBYTECODE (set on some machines) stops
# Python writing them: every hutch start would then recompile the sources (~40 ms). A regular `pip install`
# compiles at install time; this gives the checkout the same, and demo/bench/test refresh it.
bytecode:
	@PYTHONDONTWRITEBYTECODE= $(VPY) -m compileall -q src >/dev/null

demo: deps bytecode
	$(VPY) tools/demo.py $(DEMO_ARGS)

# ruff first, pytest last so the output ends with pytest's summary line (.ci/run relies on it). pytest
# runs even when ruff finds problems; then make test still fails. pytest's status (5: no tests) is kept.
test: deps bytecode
	@echo "$(VENV)/bin/ruff check src tests tools bench"; \
	lint=0; $(VENV)/bin/ruff check src tests tools bench || lint=$$?; \
	[ $$lint -eq 0 ] || echo "test: ruff check failed (exit $$lint); running pytest anyway"; \
	echo "$(VPY) -m pytest -q $(PYTEST_ARGS)"; \
	$(VPY) -m pytest -q $(PYTEST_ARGS) || exit $$?; \
	exit $$lint

bench: deps bytecode
	$(VPY) bench/run_latency.py $(BENCH_ARGS)

lint: deps
	$(VENV)/bin/ruff check src tests tools bench
	$(VENV)/bin/ruff format --check src tests tools bench

format: deps
	$(VENV)/bin/ruff format src tests tools bench

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
