#!/usr/bin/env bash
# The Action's run step: `bpfcompat matrix run` with every report into the out dir, the
# Markdown summary appended to the job summary, and outputs for the later steps. It exits
# 0 once it has recorded what happened: gate.sh fails the step afterwards with
# step-exit-code, so the reports are uploaded whatever the verdict.
#
# Inputs come as INPUT_* variables (action.yml passes them); GitHub provides
# GITHUB_WORKSPACE, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and RUNNER_TEMP.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
cd "${GITHUB_WORKSPACE:-.}" || exit 1

SUMMARY_LIMIT=$((1000 * 1024)) # GitHub takes at most 1 MiB of summary per step
fail_on=${INPUT_FAIL_ON:-fail}
out_dir=${INPUT_OUT_DIR:-bpfcompat-out}
base=${INPUT_BASE:-}
shard=${INPUT_SHARD:-}
cost_gate=${INPUT_COST_GATE:-}
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
temp=${RUNNER_TEMP:-${TMPDIR:-/tmp}}/bpfcompat
db=$temp/bpfcompat.db
log=$temp/stderr.log

name=${INPUT_ARTIFACT_NAME:-}
if [ -z "$name" ]; then
  name=bpfcompat-report
  [ -z "$shard" ] || name="$name-shard-${shard//\//-of-}"
fi
output artifact-name "$name"
output out-dir "$out_dir"

# Bad input to the Action: one line, nothing run, and the step fails with 1.
refuse() {
  annotate error "$1"
  output exit-code 1
  output status error
  output step-exit-code 1
  printf '### bpfcompat did not run\n\n    %s\n' "$1" >>"$summary"
  exit 0
}

case " $FAIL_ON_VALUES " in
  *" $fail_on "*) ;;
  *) refuse "fail-on: '$fail_on' is not one of: $FAIL_ON_VALUES" ;;
esac
if [ "$fail_on" = regression ] && [ -z "$base" ]; then
  refuse "fail-on: regression needs the base input (a run JSON export to compare against)"
fi
if [ -n "$cost_gate" ]; then
  [[ $cost_gate =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
    refuse "cost-gate: '$cost_gate' is not a percentage (e.g. 20)"
  [ -n "$base" ] || refuse "cost-gate: needs the base input (a run JSON export to compare against)"
fi
split_items "${INPUT_ARTIFACTS:-}"
artifacts=("${ITEMS[@]}")
((${#artifacts[@]})) || refuse "artifacts: no artifact given (.bpf.o files or directories)"
if ! mkdir -p "$temp" "$out_dir"; then
  refuse "out-dir: cannot create $out_dir"
fi

args=(matrix run "${artifacts[@]}"
  --db "$db" --out-dir "$out_dir"
  --json "$out_dir/run.json" --html "$out_dir/report.html"
  --markdown "$out_dir/summary.md" --junit "$out_dir/junit.xml"
  --attach-mode "${INPUT_ATTACH_MODE:-best-effort}")
[ -z "${INPUT_KERNELS_FILE:-}" ] || args+=(--kernels "$INPUT_KERNELS_FILE")
split_items "${INPUT_KERNELS:-}" --commas
for id in "${ITEMS[@]}"; do args+=(--kernel "$id"); done
[ -z "${INPUT_MANIFEST:-}" ] || args+=(--manifest "$INPUT_MANIFEST")
[ -z "$shard" ] || args+=(--shard "$shard")
split_items "${INPUT_LABELS:-}"
labels=("${ITEMS[@]}")
# The commit and the workflow run, unless the labels input names them already.
[[ -z ${GITHUB_SHA:-} || " ${labels[*]} " == *" git="* ]] || labels+=("git=$GITHUB_SHA")
[[ -z ${GITHUB_RUN_ID:-} || " ${labels[*]} " == *" github_run="* ]] ||
  labels+=("github_run=$GITHUB_RUN_ID.${GITHUB_RUN_ATTEMPT:-1}")
for label in "${labels[@]}"; do args+=(--label "$label"); done

rm -f "$out_dir"/{run.json,report.html,summary.md,junit.xml} "$log"
# Artifact names and verifier lines reach the log: no line of it may act as a workflow
# command, so GitHub stops reading them until the token is printed again.
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
echo "::stop-commands::$token"
# bpfcompat with its stderr shown live and kept, for the summary should no report be written.
logged() {
  { bpfcompat "$@" 2>&1 1>&3 3>&- | tee -a "$log" >&2; } 3>&1
  return "${PIPESTATUS[0]}"
}
logged "${args[@]}"
tool=$?

compare=""
if [ -n "$base" ] && [ -s "$out_dir/run.json" ]; then
  # The reports again, with the changes since the base; then the regression check.
  logged report --db "$db" --base "$base" --html "$out_dir/report.html" \
    --markdown "$out_dir/summary.md"
  report_code=$?
  gate=()
  [ -z "$cost_gate" ] || gate=(--fail-on-cost --cost-threshold "$cost_gate")
  logged compare --db "$db" --base "$base" "${gate[@]}"
  compare=$?
  [ "$report_code" = 0 ] || [ "$compare" = 2 ] || compare=1
elif [ -n "$base" ]; then
  compare=1 # no run to compare
fi
echo "::$token::"

case "$tool" in 0) status=pass ;; 2) status=fail ;; *) status=error ;; esac
step=$(step_exit_code "$fail_on" "$tool" "$compare")
output exit-code "$tool"
output status "$status"
output compare-exit-code "$compare"
output step-exit-code "$step"
uploads=()
for pair in run-json:run.json html:report.html junit:junit.xml markdown:summary.md; do
  file=$out_dir/${pair#*:}
  if [ -s "$file" ]; then
    uploads+=("$file")
    output "${pair%%:*}" "$file"
  fi
done
output upload-paths "$(printf '%s\n' "${uploads[@]+"${uploads[@]}"}")"

{
  if [ -s "$out_dir/summary.md" ]; then
    size=$(wc -c <"$out_dir/summary.md")
    if ((size > SUMMARY_LIMIT)); then
      head -c "$SUMMARY_LIMIT" "$out_dir/summary.md"
      printf '\n\n*(cut at %d KiB of %d: the %s artifact has the whole report)*\n' \
        $((SUMMARY_LIMIT / 1024)) $((size / 1024)) "$name"
    else
      cat "$out_dir/summary.md"
    fi
  else
    printf '### bpfcompat wrote no report (exit code %s)\n\n' "$tool"
    tail -n 30 "$log" 2>/dev/null | sed 's/^/    /' # an indented block: shown as text
  fi
  if [ "$compare" = 1 ]; then
    printf '\n**The comparison with the base run failed**: see the step log.\n'
  fi
  printf '\n'
} >>"$summary"
echo "bpfcompat action: matrix run exit code $tool ($status), fail-on $fail_on: step exit code $step"
exit 0
