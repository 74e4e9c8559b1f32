#!/usr/bin/env bash
# The Action's install step: the Debian packages bpfcompat runs and bpfcompat itself
# (scripts/install.sh) into the runner's temporary directory, `bpfcompat` on PATH for the
# later steps and the user's, then the cache key of the kernel and image cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=${RUNNER_TEMP:?RUNNER_TEMP is not set}/bpfcompat
bash "$here/../install.sh" --prefix "$root/venv" --bin-dir "$root/bin"
echo "$root/bin" >>"${GITHUB_PATH:?GITHUB_PATH is not set}"
output bpfcompat "$root/bin/bpfcompat"
cd "${GITHUB_WORKSPACE:-.}"
"$root/venv/bin/python" "$here/cache_key.py" "${INPUT_KERNELS_FILE:-}"
