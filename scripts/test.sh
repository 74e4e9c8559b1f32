#!/usr/bin/env bash
# Set up (idempotently), then run the whole test suite, including the end-to-end tests
# that boot every kernel of kernels.yaml under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
exec .venv/bin/pytest "$@"
