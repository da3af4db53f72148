# Shared helpers for tests/cli/*.sh (sourced; not a test itself: ctest runs only *.sh).
# Environment from ctest: KVQ_BIN (build/tools), KVQ_SHARED (../shared), KVQ_SOURCE_DIR.
set -euo pipefail

: "${KVQ_BIN:?KVQ_BIN must point at the built tools (ctest sets it)}"
KVQ_SHARED=${KVQ_SHARED:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../shared" && pwd)}
TESTBED="$KVQ_SHARED/models/kvq-testbed-llama2-23m"
STORIES="$KVQ_SHARED/models/stories260K"
WIKITEXT="$KVQ_SHARED/datasets/wikitext-2-raw/wiki.test.raw"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvq-cli-XXXXXX")
trap 'rm -rf "$TMP"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# run_tool OUT ERR CMD...: runs CMD, stores stdout/stderr in files, sets RC.
run_tool() {
  local out=$1 err=$2; shift 2
  set +e
  "$@" >"$out" 2>"$err"
  RC=$?
  set -e
}

# expect_one_error NAME NEEDLE... -- CMD...: the command must exit 1 (a runtime failure,
# not a crash: no signal, no abort), print nothing on stdout, and print exactly one
# "TOOL: error: ..." line on stderr (optionally followed by "hint: ..." lines) that
# contains every NEEDLE (the file it is about and the problem).
expect_one_error() {
  local name=$1; shift
  local needles=()
  while [[ $1 != "--" ]]; do needles+=("$1"); shift; done
  shift
  run_tool "$TMP/$name.out" "$TMP/$name.err" "$@"
  local err; err=$(cat "$TMP/$name.err")
  [[ $RC -eq 1 ]] || fail "$name: exit code $RC, expected 1; stderr: $err"
  [[ ! -s "$TMP/$name.out" ]] || fail "$name: unexpected stdout: $(cat "$TMP/$name.out")"
  local lines; lines=$(grep -c '' "$TMP/$name.err" || true)
  local errors; errors=$(grep -c '^kvq-[a-z]*: error: ' "$TMP/$name.err" || true)
  local hints; hints=$(grep -c '^hint: ' "$TMP/$name.err" || true)
  [[ $errors -eq 1 ]] || fail "$name: expected one error line, got: $err"
  [[ $((errors + hints)) -eq $lines ]] || fail "$name: stray stderr lines: $err"
  [[ $(head -n1 "$TMP/$name.err") == kvq-*": error: "* ]] || fail "$name: first line is not the error: $err"
  local n
  for n in "${needles[@]}"; do
    grep -q -F -- "$n" <(head -n1 "$TMP/$name.err") || fail "$name: error line lacks '$n': $err"
  done
  echo "ok   $name: $(head -n1 "$TMP/$name.err")"
}

# json_get FILE KEY: a top-level value of a JSON object (python3, stdlib only).
json_get() {
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v)' "$1" "$2"
}
