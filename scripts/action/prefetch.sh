#!/usr/bin/env bash
# The Action's prefetch step, between restoring and saving the cache: the kernels of the
# selection and the guest image are fetched and built before the run, so the cache saved
# next holds them whatever the run's verdict. KVM is opened to this user where the runner
# has it, and doctor prints what the run will use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
cd "${GITHUB_WORKSPACE:-.}"
kopt=()
[ -z "${INPUT_KERNELS_FILE:-}" ] || kopt=(--kernels "$INPUT_KERNELS_FILE")
split_items "${INPUT_KERNELS:-}" --commas
ids=("${ITEMS[@]}")
selection=()
for id in "${ids[@]}"; do selection+=(--kernel "$id"); done

# Hosted runners have /dev/kvm owned by root: guests run several times faster under KVM.
if [ -e /dev/kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; } && sudo -n true 2>/dev/null; then
  sudo -n chmod a+rw /dev/kvm && echo "bpfcompat action: opened /dev/kvm to $(id -un)"
fi

bpfcompat kernels fetch "${ids[@]}" "${kopt[@]}"
# Building the image needs root (mmdebstrap --mode=root, chroot): through sudo on runners
# that are not root, then the cache is handed back so this user can read and save it.
# Only the images the selected kernels boot (an arm64 kernel needs its own).
as_root "$(command -v "${BPFCOMPAT:-bpfcompat}")" image build "${kopt[@]}" "${selection[@]}"
if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then
  sudo -n chown -R "$(id -u):$(id -g)" "${XDG_CACHE_HOME:-$HOME/.cache}/bpfcompat"
fi
if ! bpfcompat doctor "${kopt[@]}" "${selection[@]}"; then
  annotate warning "doctor: something a run needs is missing (see the prefetch step's log)"
fi
