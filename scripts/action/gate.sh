#!/usr/bin/env bash
# The Action's last step: the step's exit code, decided by run.sh from `fail-on`, after the
# reports were uploaded.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
code=${STEP_EXIT_CODE:-}
if [ -z "$code" ]; then
  annotate error "the run step recorded no exit code (it did not finish)"
  exit 1
fi
if [ "$code" != 0 ]; then
  annotate error "matrix run exit code ${TOOL_EXIT_CODE:-?} (${STATUS:-?}); fail-on ${FAIL_ON:-fail}: the step fails with $code. The job summary has the matrix and the ${ARTIFACT_NAME:-bpfcompat-report} artifact the reports."
fi
exit "$code"
