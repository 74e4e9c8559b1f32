#!/usr/bin/env bash
# Set up (idempotently), then run the embedded default matrix: every kernel of
# kernels.yaml x every example, writing out/report.html (plus JSON, Markdown, JUnit).
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit 1
exec .venv/bin/bpfcompat matrix run examples --out-dir out \
  --json out/run.json --markdown out/summary.md --junit out/junit.xml "$@"
