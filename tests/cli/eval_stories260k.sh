#!/usr/bin/env bash
# kvq-eval end to end on the llama2.c stories260K checkpoint with its tok512.bin tokenizer:
# one window holding the PROVENANCE.md sentence (BOS + 44 tokens) scores exactly the 44
# predictions whose mean NLL the provenance gives: 0.32410 nats (fp32, double sums).
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

text="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
printf '%s' "$text" > "$TMP/story.txt"

run_tool "$TMP/r.json" "$TMP/r.err" "$EVAL" --task ppl --model "$STORIES/stories260K.bin" \
  --tokenizer "$STORIES/tok512.bin" --dataset "$TMP/story.txt" --seqlen 45 --backend cpu --format json
[[ $RC -eq 0 ]] || fail "exit $RC: $(cat "$TMP/r.err")"
[[ $(json_get "$TMP/r.json" protocol) == text ]] || fail "protocol"
[[ $(json_get "$TMP/r.json" tokens_available) -eq 45 ]] || fail "tokens_available $(json_get "$TMP/r.json" tokens_available), expected 45"
[[ $(json_get "$TMP/r.json" windows) -eq 1 ]] || fail "windows"
[[ $(json_get "$TMP/r.json" tokens_scored) -eq 44 ]] || fail "tokens_scored"
python3 - "$TMP/r.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
# The oracle is printed to 5 decimals, so agreement is bounded by its rounding (5e-6)
# plus fp32 forward-pass error; issue 2 asks for 1e-4.
assert abs(r["nll"] - 0.32410) < 1e-4, r["nll"]
assert abs(r["ppl"] - math.exp(r["nll"])) < 1e-12 * r["ppl"], (r["ppl"], r["nll"])
print("ok   stories260K nll %.6f (oracle 0.32410), ppl %.6f" % (r["nll"], r["ppl"]))
PY

# Progress and configuration go to stderr, never to stdout; no carriage returns off a TTY.
grep -q '^\[1/1\] ppl' "$TMP/r.err" || fail "no progress line: $(cat "$TMP/r.err")"
grep -q 'tok512.bin' "$TMP/r.err" || fail "configuration does not name the tokenizer"
if grep -q $'\r' "$TMP/r.err"; then fail "carriage return in non-TTY stderr"; fi

# The text table names the numbers.
run_tool "$TMP/t.out" "$TMP/t.err" "$EVAL" --model "$STORIES/stories260K.bin" \
  --tokenizer "$STORIES/tok512.bin" --dataset "$TMP/story.txt" --seqlen 45
[[ $RC -eq 0 ]] || fail "text run exit $RC"
grep -Eq '^ppl +1\.38' "$TMP/t.out" || fail "text table: $(cat "$TMP/t.out")"
grep -Eq '^windows +1 \(all\)' "$TMP/t.out" || fail "text table: $(cat "$TMP/t.out")"

# A llama2.c checkpoint without --tokenizer is a clear error.
expect_one_error no_tokenizer "stories260K.bin" "no tokenizer" -- \
  "$EVAL" --model "$STORIES/stories260K.bin" --dataset "$TMP/story.txt" --seqlen 45
echo "PASS"
