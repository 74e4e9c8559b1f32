#!/usr/bin/env bash
# The Action's first step: can this runner's python3 host bpfcompat (3.11 or newer)? If
# not, the Action sets up Python 3.11 first. A runner with no python3 at all gets Debian's
# from scripts/install.sh instead (a Debian 12+ container).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if ! command -v python3 >/dev/null || python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  output python-ok true
else
  echo "bpfcompat action: $(python3 --version 2>&1) is older than 3.11: setting up Python 3.11"
  output python-ok false
fi
