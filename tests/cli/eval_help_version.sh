#!/usr/bin/env bash
# kvq-eval --help / --version / usage errors: exit codes 0, 0, 2 and one error line.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

run_tool "$TMP/help.out" "$TMP/help.err" "$EVAL" --help
[[ $RC -eq 0 ]] || fail "--help exit $RC"
for opt in --task --model --dataset --seqlen --max-windows --tokenizer --backend --threads --format --protocol; do
  grep -q -- "$opt" "$TMP/help.out" || fail "--help does not mention $opt"
done
# --help shows defaults.
grep -q -- "--format.*text" "$TMP/help.out" || fail "--help shows no default for --format"

run_tool "$TMP/v.out" "$TMP/v.err" "$EVAL" --version
[[ $RC -eq 0 ]] || fail "--version exit $RC"
grep -Eq '^kvq-eval [0-9]+\.[0-9]+\.[0-9]+ \(git [0-9a-f]{7,}(-dirty)?, CUDA (on|off)\)$' "$TMP/v.out" \
  || fail "--version printed: $(cat "$TMP/v.out" "$TMP/v.err")"

# Usage errors exit 2 with one error line.
for args in "--no-such-flag" "--task no-such-task" "--seqlen -3" "--format xml" "--backend tpu" "--protocol wiki"; do
  # shellcheck disable=SC2086
  run_tool "$TMP/u.out" "$TMP/u.err" "$EVAL" $args
  [[ $RC -eq 2 ]] || fail "'$args': exit $RC, expected 2: $(cat "$TMP/u.err")"
  [[ $(grep -c '^kvq-eval: error: ' "$TMP/u.err") -eq 1 ]] || fail "'$args': $(cat "$TMP/u.err")"
  echo "ok   usage '$args': $(head -n1 "$TMP/u.err")"
done

# --backend cuda in a build without CUDA: a clear runtime error, not a silent fallback.
if grep -q 'CUDA off' "$TMP/v.out"; then
  expect_one_error cuda_off "--backend" "no CUDA backend" -- \
    "$EVAL" --backend cuda --model "$TESTBED" --dataset "$WIKITEXT" --seqlen 16 --max-windows 1
fi
echo "PASS"
