# shellcheck shell=bash
# Helpers shared by the Action's step scripts (sourced, not run).

# Write one step output (GitHub's GITHUB_OUTPUT file; printed when there is none).
output() {
  local name=$1 value=$2
  if [[ $value == *$'\n'* ]]; then
    local delim="bpfcompat_${RANDOM}${RANDOM}${RANDOM}"
    printf '%s<<%s\n%s\n%s\n' "$name" "$delim" "$value" "$delim" >>"${GITHUB_OUTPUT:-/dev/stdout}"
  else
    printf '%s=%s\n' "$name" "$value" >>"${GITHUB_OUTPUT:-/dev/stdout}"
  fi
}

# An input as items: one per line when it has several lines (so an item may hold spaces),
# else separated by spaces (and commas, with --commas). Result in the array ITEMS.
split_items() {
  local value=$1 sep=${2:-}
  ITEMS=()
  if [[ $value == *$'\n'* ]]; then
    local line
    while IFS= read -r line; do
      line="${line#"${line%%[![:space:]]*}"}"
      line="${line%"${line##*[![:space:]]}"}"
      [ -n "$line" ] && ITEMS+=("$line")
    done <<<"$value"
  else
    [ "$sep" = --commas ] && value=${value//,/ }
    read -r -a ITEMS <<<"$value" || true
  fi
}

# The bpfcompat command: BPFCOMPAT when set (a path), else the one on PATH.
bpfcompat() {
  command "${BPFCOMPAT:-bpfcompat}" "$@"
}

# Root for what needs it (building the guest image): sudo when not root and it works
# without a password, as on hosted runners.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif sudo -n true 2>/dev/null; then
    sudo -n env "PATH=$PATH" "XDG_CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}" \
      ${BPFCOMPAT_DEBIAN_MIRROR:+"BPFCOMPAT_DEBIAN_MIRROR=$BPFCOMPAT_DEBIAN_MIRROR"} "$@"
  else
    "$@"
  fi
}

# shellcheck disable=SC2034 # read by the scripts that source this file
FAIL_ON_VALUES="never error regression fail"

# The step's exit code from `fail-on`, the exit code of `bpfcompat matrix run` (0 every
# required cell passes, 2 a required cell fails, 1 a tool or infrastructure error or bad
# input; anything else, such as 130 after an interrupt, counts as 1) and that of
# `bpfcompat compare --base` ("" when there is no base; 2 a required cell regressed).
# Each fail-on value fails the step on its own outcome and on every more serious one:
#   never       nothing fails the step
#   error       tool or infrastructure errors (exit 1)
#   regression  errors, and required cells that passed in the base and fail now (exit 2)
#   fail        errors, and any required cell that fails (exit 2): the tool's own code
step_exit_code() {
  local fail_on=$1 tool=$2 compare=${3:-}
  case "$tool" in 0 | 2) ;; *) tool=1 ;; esac
  case "$compare" in "" | 0 | 2) ;; *) compare=1 ;; esac
  local errored=0
  [ "$tool" = 1 ] || [ "$compare" = 1 ] && errored=1
  case "$fail_on" in
    never) echo 0 ;;
    error) echo "$errored" ;;
    regression)
      if ((errored)); then echo 1; elif [ "$compare" = 2 ]; then echo 2; else echo 0; fi ;;
    fail)
      if ((errored)); then echo 1
      elif [ "$tool" = 2 ] || [ "$compare" = 2 ]; then echo 2
      else echo 0; fi ;;
    *) return 1 ;;
  esac
}

# A workflow-command annotation (::error::), its text escaped as GitHub requires so a
# value can neither end the command nor start another line.
annotate() {
  local level=$1 text=$2
  text=${text//'%'/'%25'}
  text=${text//$'\r'/'%0D'}
  text=${text//$'\n'/'%0A'}
  echo "::$level title=bpfcompat::$text"
}
