# Install, run, test and benchmark aiovirtd on Debian 12 (GNU make).
#
#   make run        install what is missing, then run a daemon under ./.state
#   make test       all tests, the slow end-to-end ones included
#   make test-fast  unit tests only (no daemon, no QEMU)
#   make bench      RPC benchmark against Debian's libvirtd
#   make clean      remove the venv, state and caches
#
# A second run is quick: Debian packages are checked with dpkg-query and the
# venv is only rebuilt when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STATE := $(CURDIR)/.state
PYTEST_ARGS ?=

# virsh, QEMU with its UEFI firmware, ip for bridged NICs and schema validation
# to run the daemon; dnsmasq and nftables for virtual networks (busybox: a DHCP
# client for their tests); parted, lvm2,
# nfs-common and e2fsprogs for storage pools (fuse3 and libfuse2: the hung-mount
# test's FUSE file system); virt-install for its own tests;
# libvirt-python (a test extra, built from source) needs the headers,
# pkg-config and a compiler.
DEBS := qemu-system-x86 qemu-utils ovmf iproute2 libvirt-clients libxml2-utils \
        dnsmasq-base nftables busybox parted lvm2 nfs-common e2fsprogs fuse3 libfuse2 \
        virtinst \
        python3-venv python3-dev libvirt-dev pkg-config gcc libc6-dev
# libvirtd for the benchmark's reference daemon; it runs as a session daemon of
# an unprivileged user, so the system units of libvirt-daemon-system are not needed.
BENCH_DEBS := libvirt-daemon libvirt-daemon-driver-qemu

# Installs the Debian packages named in $(1) that are not installed yet.
define apt_ensure
missing=$$(for p in $(1); do \
  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; \
done); \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then sudo=; \
  elif command -v sudo >/dev/null; then sudo=sudo; \
  else echo "make: need root to install Debian packages:" $$missing >&2; exit 1; fi; \
  echo "installing Debian packages:" $$missing; \
  log=$$(mktemp); \
  apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"; \
  if ! $$apt install --no-install-recommends $$missing >"$$log" 2>&1; then \
    $$apt update >>"$$log" 2>&1 && $$apt install --no-install-recommends $$missing >>"$$log" 2>&1 \
      || { cat "$$log" >&2; rm -f "$$log"; exit 1; }; \
  fi; \
  rm -f "$$log"; \
fi
endef

.PHONY: help deps bench-deps run test test-fast bench clean

help:
	@sed -n '3,8s/^# *//p' $(firstword $(MAKEFILE_LIST))

deps:
	@$(call apt_ensure,$(DEBS))
	@if [ -e /dev/kvm ] && ! [ -r /dev/kvm -a -w /dev/kvm ]; then \
	  echo "note: /dev/kvm is not accessible; guests fall back to TCG" >&2; fi

bench-deps: deps
	@$(call apt_ensure,$(BENCH_DEBS))

# The stamp records that the venv holds the project (editable) with its test
# extras for this pyproject.toml.
$(VENV)/.installed: pyproject.toml | deps
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing aiovirtd and its test dependencies into $(VENV)"
	@$(VENV)/bin/python -m pip install -qq --disable-pip-version-check -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	@mkdir -p $(STATE)
	exec $(VENV)/bin/aiovirtd --root $(STATE)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m 'not slow' $(PYTEST_ARGS)

bench: bench-deps $(VENV)/.installed
	$(VENV)/bin/python bench/codec.py
	$(VENV)/bin/python bench/rpc.py
	$(VENV)/bin/python bench/lifecycle.py
	$(VENV)/bin/python bench/storage.py

clean:
	rm -rf $(VENV) .state build *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
