#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: system packages, the Python venv,
# the example objects, the kernels of kernels.yaml (fetched, or built from source) and
# the guest images (one per architecture the matrix uses).
# Safe to run again: every step skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86      # boots the kernels
  qemu-system-arm      # boots the arm64 kernels (qemu-system-aarch64)
  qemu-user-static     # runs arm64 programs while building the arm64 guest image ...
  binfmt-support       # ... registered with binfmt_misc, as Debian builds foreign chroots
  rpm rpm2cpio         # users' .rpm kernels (and the tests that make one)
  # building a kernel from Debian's linux-source package (source: build), and its BTF
  build-essential bc bison flex libelf-dev libssl-dev dwarves perl
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

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
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

# Foreign-architecture programs in a chroot need binfmt_misc mounted and qemu-aarch64
# registered with the F flag (Debian's qemu-user-static entry has it); a container
# without systemd does neither at boot.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  $SUDO update-binfmts --enable qemu-aarch64
fi

make -s -C examples
# Building the kernels of `source: build` takes minutes of CPU: it runs beside the
# downloads of the other kernels and the guest image builds, which leave cores idle.
.venv/bin/bpfcompat kernels build &
build_pid=$!
trap 'kill "$build_pid" 2>/dev/null || true' EXIT  # a failing step below stops it too
others=$(.venv/bin/bpfcompat kernels list --json | .venv/bin/python -c \
  'import json, sys; print(" ".join(k["id"] for k in json.load(sys.stdin) if k["source"] != "build"))')
# shellcheck disable=SC2086  # one word per kernel id
.venv/bin/bpfcompat kernels fetch $others
.venv/bin/bpfcompat image build
wait "$build_pid"
