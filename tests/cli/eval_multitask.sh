#!/usr/bin/env bash
# kvq-eval --task ppl,kld in compare mode (stories260K): one merged table whose PPL and
# KLD columns equal the single-task runs exactly, deltas against fp16, a plot of the first
# task's metric with short labels, thresholds over
# the merged columns (exit 3, the failing metric named), and a bad task list refused with
# a usage error naming the task.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

text="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
printf '%s' "$text" > "$TMP/story.txt"
common=(--model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin" --dataset "$TMP/story.txt"
        --seqlen 45 --backend cpu --format json --compare int4 --compare kivi:bits=2,group=8,residual=16)

run_tool "$TMP/m.json" "$TMP/m.err" "$EVAL" --task ppl,kld "${common[@]}" --plot "$TMP/m.svg"
[[ $RC -eq 0 ]] || fail "--task ppl,kld: exit $RC: $(cat "$TMP/m.err")"
run_tool "$TMP/p.json" "$TMP/p.err" "$EVAL" --task ppl "${common[@]}"
[[ $RC -eq 0 ]] || fail "--task ppl: exit $RC: $(cat "$TMP/p.err")"
run_tool "$TMP/k.json" "$TMP/k.err" "$EVAL" --task kld "${common[@]}"
[[ $RC -eq 0 ]] || fail "--task kld: exit $RC: $(cat "$TMP/k.err")"
python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
m, p, k = (json.load(open(f"{d}/{n}.json")) for n in "mpk")
assert m["task"] == "ppl,kld" and m["tasks"] == ["ppl", "kld"], (m["task"], m.get("tasks"))
assert [r["method"] for r in m["rows"]] == [r["method"] for r in p["rows"]] == [r["method"] for r in k["rows"]]
assert m["rows"][0]["reference"] and len(m["rows"]) == 3
for mr, pr, kr in zip(m["rows"], p["rows"], k["rows"]):
    assert mr["ppl"] == pr["ppl"] and mr["ppl_delta_pct"] == pr["ppl_delta_pct"], (mr["method"], mr["ppl"], pr["ppl"])
    for f in ("kld_mean", "kld_median", "kld_p99", "top1"):
        assert mr[f] == kr[f], (mr["method"], f, mr[f], kr[f])
    assert mr["effective_bits"] == pr["effective_bits"], mr["method"]
assert m["rows"][0]["kld_mean"] == 0 and m["rows"][1]["kld_mean"] > 0 and m["rows"][1]["ppl_delta_pct"] != 0
print("ok   merged ppl,kld equals the single-task runs:", [(r["method"][:12], round(r["ppl"], 4), round(r["kld_mean"], 5)) for r in m["rows"]])
PY

# The plot uses the first task's metric (PPL) and short labels (the table keeps full specs).
grep -q 'perplexity' "$TMP/m.svg" || fail "plot: no perplexity axis"
for label in fp16 int4 kivi-2; do
  grep -q ">$label</text>" "$TMP/m.svg" || fail "plot: no label $label"
done
echo "ok   plot labels fp16, int4, kivi-2"

# Thresholds see both tasks' columns: a KLD limit below int4's fails with exit 3.
run_tool "$TMP/t.json" "$TMP/t.err" "$EVAL" --task ppl,kld "${common[@]}" --max-kld 1e-9
[[ $RC -eq 3 ]] || fail "--max-kld 1e-9: exit $RC, expected 3: $(cat "$TMP/t.err")"
grep -q "threshold failed: int4.*kld" "$TMP/t.err" || fail "--max-kld: failing metric not named: $(cat "$TMP/t.err")"
echo "ok   --max-kld over the merged table exits 3: $(grep 'threshold failed' "$TMP/t.err" | head -1)"

run_tool "$TMP/b.out" "$TMP/b.err" "$EVAL" --task ppl,perplexity "${common[@]}"
[[ $RC -eq 2 ]] || fail "bad task list: exit $RC, expected 2: $(cat "$TMP/b.err")"
grep -q "perplexity" "$TMP/b.err" || fail "bad task list: the task is not named: $(cat "$TMP/b.err")"
run_tool "$TMP/c.out" "$TMP/c.err" "$EVAL" --task ppl,kld --model "$STORIES/stories260K.bin" \
  --tokenizer "$STORIES/tok512.bin" --dataset "$TMP/story.txt" --seqlen 45 --backend cpu
[[ $RC -ne 0 ]] || fail "several tasks without --compare: exit 0"
grep -q "compare" "$TMP/c.err" || fail "several tasks without --compare: $(cat "$TMP/c.err")"
echo "PASS"
