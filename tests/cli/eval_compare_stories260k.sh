#!/usr/bin/env bash
# kvq-eval compare mode on stories260K (one 45-token window, CPU): fp16 is added as the
# reference row, every method runs on the same window, one table (text or JSON with the
# stable fields of docs/eval.md), an SVG plot, and --max-ppl-increase: a method within
# the limit exits 0, one beyond it exits 3 naming the row and the metric on stderr.
# Measured on this window: PPL fp16 1.3828, int8 1.3842 (+0.10%), int2 8.0981 (+486%).
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

text="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
printf '%s' "$text" > "$TMP/story.txt"
common=(--task ppl --model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin"
        --dataset "$TMP/story.txt" --seqlen 45 --backend cpu)

run_tool "$TMP/c.json" "$TMP/c.err" "$EVAL" "${common[@]}" --compare int8 --compare int2 \
  --compare kivi:bits=2,group=8,residual=32 --format json --plot "$TMP/p.svg"
[[ $RC -eq 0 ]] || fail "compare exit $RC: $(cat "$TMP/c.err")"
# Each method also run alone: compare mode must give the same PPL (same windows, fresh state).
for kv in int8 int2; do
  run_tool "$TMP/$kv.json" "$TMP/$kv.err" "$EVAL" "${common[@]}" --kv $kv --format json
  [[ $RC -eq 0 ]] || fail "--kv $kv exit $RC"
done
python3 - "$TMP" <<'PY'
import json, math, sys
d = sys.argv[1]
c = json.load(open(f"{d}/c.json"))
rows = c["rows"]
assert [r["method"].split(":")[0] for r in rows] == ["fp16", "int8", "int2", "kivi"], [r["method"] for r in rows]
assert rows[0]["reference"] and rows[0]["ppl_delta_pct"] == 0 and rows[0]["effective_bits"] == 16
assert c["seqlen"] == 45 and c["model"] == "stories260K.bin"
for r, k in ((rows[1], "int8"), (rows[2], "int2")):
    alone = json.load(open(f"{d}/{k}.json"))
    assert r["ppl"] == alone["ppl"], (k, r["ppl"], alone["ppl"])
    assert r["effective_bits"] == alone["bits_per_element"] and r["kv_bytes_per_token"] == alone["kv_bytes_per_token"]
    assert abs(r["ppl_delta_pct"] - 100 * (r["ppl"] / rows[0]["ppl"] - 1)) < 1e-9
assert rows[1]["ppl_delta_pct"] < 1.0 < rows[2]["ppl_delta_pct"], (rows[1]["ppl_delta_pct"], rows[2]["ppl_delta_pct"])
# KIVI with a 32-token residual on 45 tokens: 32 fp16 tokens, 13 quantized -> between.
assert rows[2]["effective_bits"] < rows[3]["effective_bits"] < 16, rows[3]["effective_bits"]
print("ok   compare: " + ", ".join("%s ppl %.4f (%+.3f%%)" % (r["method"], r["ppl"], r["ppl_delta_pct"]) for r in rows))
PY
head -c 200 "$TMP/p.svg" | grep -q '<svg' || fail "plot is not an SVG"
grep -q 'fp16' "$TMP/p.svg" || fail "plot does not label fp16"

# Text table.
run_tool "$TMP/t.out" "$TMP/t.err" "$EVAL" "${common[@]}" --compare fp16 --compare int8
[[ $RC -eq 0 ]] || fail "text exit $RC"
grep -Eq '^fp16 \(ref\) +16\.00 +640 +1\.3828' "$TMP/t.out" || fail "text table: $(cat "$TMP/t.out")"
[[ $(grep -c '^fp16' "$TMP/t.out") -eq 1 ]] || fail "fp16 given explicitly must not be added twice"

# Thresholds: int8 (+0.10%) is within 1%, int2 is not.
run_tool "$TMP/ok.out" "$TMP/ok.err" "$EVAL" "${common[@]}" --compare int8 --max-ppl-increase 1%
[[ $RC -eq 0 ]] || fail "within threshold: exit $RC: $(cat "$TMP/ok.err")"
! grep -q 'threshold failed' "$TMP/ok.err" || fail "within threshold but reported failed"
run_tool "$TMP/bad.out" "$TMP/bad.err" "$EVAL" "${common[@]}" --compare int8 --compare int2 --max-ppl-increase 1%
[[ $RC -eq 3 ]] || fail "beyond threshold: exit $RC, expected 3"
grep -q '^kvq-eval: threshold failed: int2:.*: ppl_increase .*% > 1%$' "$TMP/bad.err" || fail "failing metric not named: $(cat "$TMP/bad.err")"
[[ $(grep -c 'threshold failed' "$TMP/bad.err") -eq 1 ]] || fail "int8 must not fail"
grep -q '^int2' "$TMP/bad.out" || fail "the table is printed even when a threshold fails"

# Thresholds and plots need compare mode: a usage error line, not silence.
expect_one_error plot_single "--plot" "compare mode" -- "$EVAL" "${common[@]}" --kv int8 --plot "$TMP/x.svg"
expect_one_error bad_percent "--max-ppl-increase" -- "$EVAL" "${common[@]}" --compare int8 --max-ppl-increase lots
echo "PASS"
