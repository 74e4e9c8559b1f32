#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: system packages, the Python venv,
# the example objects, the kernels of kernels.yaml and the guest image.
# Safe to run again: every step skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86      # boots the kernels
  clang llvm           # builds examples/ (clang -target bpf)
  libbpf-dev libbpf1   # bpf_helpers.h for examples; libbpf for host-kernel validation
  bpftool              # feature probes on the host
  mmdebstrap           # builds the guest userspace
  dpkg-dev             # dpkg-architecture (multiarch include dir)
  debian-archive-keyring
  make xz-utils zstd
  lz4                  # kernel BTF from LZ4-compressed vmlinuz (Debian 11/12)
  busybox-static       # bench: the bare-boot floor initramfs
  chromium chromium-driver  # browser tests of the HTML report
  shellcheck           # lints the GitHub Action's scripts
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.bpfcompat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

make -s -C examples
.venv/bin/bpfcompat kernels fetch
.venv/bin/bpfcompat image build
