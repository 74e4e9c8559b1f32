#!/usr/bin/env bash
# Install bpfcompat to use it, not to develop it: the Debian packages a matrix run needs,
# and this checkout built into a wheel and installed, with its dependencies, into a venv
# of its own. The Dockerfile and the GitHub Action run this script, and
# tests/test_package.py runs it (through the Action's step), so what they install is tested.
#
#   scripts/install.sh [--prefix DIR] [--bin-dir DIR] [--no-apt] [--print-apt]
#     --prefix DIR   the venv to create (default /opt/bpfcompat; replaced if it exists)
#     --bin-dir DIR  put a `bpfcompat` symlink here (default /usr/local/bin; '' for none)
#     --no-apt       install no Debian packages
#     --print-apt    print the Debian packages this host would get, one a line, and stop
#   PYTHON=python3.12 picks the interpreter (3.11 or newer; default python3).
#
# Development tools (clang, libbpf-dev, chromium) are scripts/setup.sh's business.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/bpfcompat
bin_dir=/usr/local/bin
apt=1
print_apt=0
while (($#)); do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2?--bin-dir needs a directory}; shift 2 ;;
    --no-apt) apt=0; shift ;;
    --print-apt) print_apt=1; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# What a matrix run runs on the host; the guest's userspace comes from the guest suite.
RUNTIME_PACKAGES=(
  qemu-system-x86        # boots the kernels
  qemu-system-arm        # boots the arm64 kernels (qemu-system-aarch64)
  qemu-user-static binfmt-support  # runs arm64 programs while building the arm64 image
  rpm2cpio               # unpacks .rpm kernels
  # builds `source: build` kernels (the default matrix's kernel without BTF) and their BTF
  build-essential bc bison flex libelf-dev libssl-dev dwarves perl xz-utils
  mmdebstrap             # builds the guest image
  debian-archive-keyring # verifies the Debian packages fetched for kernels and the image
  zstd lz4               # unpack kernel modules, and kernels to read their BTF
  ca-certificates        # pip and https mirrors
)

PY=${PYTHON:-python3}
py_ok() { "$PY" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

wanted=("${RUNTIME_PACKAGES[@]}")
# Debian's python3 ships venv's ensurepip separately (python3-venv).
py_ok || wanted+=(python3 python3-venv)
if ((print_apt)); then
  printf '%s\n' "${wanted[@]}"
  exit 0
fi

if ((apt)); then
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "install.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# A chroot of the arm64 image needs binfmt_misc mounted and qemu-aarch64 registered (a
# container's init may do neither); skipped where this host cannot (no root).
if ((apt)) && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  [ -e /proc/sys/fs/binfmt_misc/status ] ||
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then
    $SUDO update-binfmts --enable qemu-aarch64 || true
  fi
fi

if ! py_ok; then
  echo "install.sh: $PY is not Python 3.11+ with venv (set PYTHON=..., or install python3-venv)" >&2
  exit 1
fi

# Build from a clean copy of the sources: an in-tree build would reuse a stale build/
# directory, and the kernels.yaml symlink in the package must resolve inside the copy.
work=$(mktemp -d "${TMPDIR:-/tmp}/bpfcompat-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
tar -C "$src" --exclude=__pycache__ --exclude='*.egg-info' \
  -cf - pyproject.toml README.md kernels.yaml src | tar -C "$work/src" -xf -

"$PY" -m venv --clear "$prefix"
"$prefix/bin/python" -m pip wheel -q --no-deps -w "$work/wheel" "$work/src"
"$prefix/bin/python" -m pip install -q "$work"/wheel/bpfcompat-*.whl

if [ -n "$bin_dir" ]; then
  mkdir -p "$bin_dir"
  ln -sfn "$prefix/bin/bpfcompat" "$bin_dir/bpfcompat"
fi
"$prefix/bin/bpfcompat" --version
