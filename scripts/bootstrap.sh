#!/usr/bin/env bash
# Installs everything Switchyard needs to build and test on a fresh Debian
# bookworm machine. Idempotent: each step checks first and is skipped when its
# result is already present, so a warm machine passes through in seconds.
#
# eBPF toolchain routes (see DEVELOPERS.md):
#   nightly  - rustup nightly + rust-src, built with -Z build-std=core
#   rustc-web - Debian's rustc-web with the prebuilt BPF core
#               (libstd-rust-web-dev-bpf) and RUSTC_BOOTSTRAP=1
# The nightly route is preferred; the rustc-web route is the fallback.
# The chosen route is written to target/bpf-toolchain.env for xtask.
set -euo pipefail

LLVM_VERSION=22
BPF_LINKER_VERSION=0.13.0
here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\033[1mbootstrap:\033[0m %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Tools the tests and the demo use: iproute2 for namespaces/veth/tc, bpftool
# for map dumps, build essentials for crates with C parts.
apt_install iproute2 util-linux ethtool bpftool build-essential pkg-config ca-certificates curl openssl python3

# The real cluster (tests/src/realcluster): a containerd, runc and the CNI
# plugins per node, iptables for the nodes' FORWARD policy, nftables and
# conntrack for the real kube-proxy in side-by-side conformance runs,
# debootstrap for the images' Debian roots, busybox-static for small test
# images. The
# packages' own services are not started: there is no init here, and the
# cluster starts its daemons itself.
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; fi
apt_install containerd runc containernetworking-plugins iptables nftables conntrack debootstrap busybox-static

# Host Rust toolchain (stable) for the user-space crates.
if ! command -v cargo >/dev/null; then
  say "installing rustup stable"
  apt_install rustup 2>/dev/null || true
  if command -v rustup >/dev/null; then
    rustup toolchain install stable --profile minimal -c rustfmt,clippy
  else
    say "no cargo and no rustup package: install a Rust toolchain first"; exit 1
  fi
fi

route=""
# Route 1: rustup nightly with rust-src.
if command -v rustup >/dev/null && rustup run nightly rustc --version >/dev/null 2>&1; then
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding rust-src to the nightly toolchain"
    rustup component add rust-src --toolchain nightly >/dev/null 2>&1 || true
  fi
  if rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    route=nightly
  fi
fi
if [ -z "$route" ] && command -v rustup >/dev/null && ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "trying to install a nightly toolchain"
  if rustup toolchain install nightly --profile minimal -c rust-src >/dev/null 2>&1; then
    route=nightly
  fi
fi
# Route 2: Debian rustc-web with a prebuilt core for BPF.
if [ -z "$route" ]; then
  say "nightly route unavailable; falling back to Debian rustc-web"
  apt_install rustc-web cargo-web libstd-rust-web-dev-bpf
  route=rustc-web
fi
say "eBPF toolchain route: $route"

# bpf-linker against the system LLVM.
if ! command -v bpf-linker >/dev/null; then
  apt_install "llvm-${LLVM_VERSION}-dev" "libpolly-${LLVM_VERSION}-dev" zlib1g-dev libzstd-dev
  say "building bpf-linker ${BPF_LINKER_VERSION} against LLVM ${LLVM_VERSION} (several minutes, once)"
  LLVM_PREFIX="/usr/lib/llvm-${LLVM_VERSION}" cargo install --locked bpf-linker \
    --version "${BPF_LINKER_VERSION}" --no-default-features --features "llvm-${LLVM_VERSION}"
fi

# The agent pins its maps on bpffs; mount it where a minimal machine lacks it.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != "bpf_fs" ]; then
  say "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi

mkdir -p "$here/target"
echo "SWITCHYARD_BPF_ROUTE=$route" > "$here/target/bpf-toolchain.env"

# The real kube-apiserver, etcd, kubectl and helm for the controller and chart
# tests (cached; built from their Go modules on first use).
"$here/scripts/k8s-binaries.sh" --with-e2e
say "ready (route=$route, bpf-linker=$(command -v bpf-linker))"
