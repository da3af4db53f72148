#!/usr/bin/env bash
# kvq-eval --task longbench end to end on the testbed model (CPU): the hand-written fixture
# in tests/data/longbench (LongBench v1 jsonl: trec with all_classes, qasper answers,
# passage_retrieval_en, lcc), the real dataset2prompt/dataset2maxlen config, a 160-token
# window (qasper's prompts are truncated in the middle), at most 8 new tokens, fp16 and int4.
# Checks: per-task and average scores in the compare table and JSON (the average is the
# mean of the tasks), a task's score does not depend on which other tasks run, memory
# columns (fp16 KV 9216 B/token by hand, the budget column by the kv_memory.h formula
# recomputed here, peak GPU n/a on the CPU), tokens/s per row, the plot, one-line errors.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"
[[ -f $TESTBED/config.json ]] || { echo "testbed model not found: skipped"; exit 77; }
FIX="$KVQ_SOURCE_DIR/tests/data/longbench"
common=(--task longbench --model "$TESTBED" --backend cpu --longbench-dir "$FIX" --seqlen 160 --max-new-tokens 8)

run_tool "$TMP/lb.json" "$TMP/lb.err" "$EVAL" "${common[@]}" --tasks trec,qasper,passage_retrieval_en \
  --compare int4 --memory-budget 1GiB --format json --plot "$TMP/lb.svg"
[[ $RC -eq 0 ]] || fail "longbench: exit $RC: $(tail -3 "$TMP/lb.err")"
grep -q 'window     160 tokens' "$TMP/lb.err" || fail "configuration not printed"
python3 - "$TMP/lb.json" <<'PY'
import json, math, sys
j = json.load(open(sys.argv[1]))
rows = j["rows"]
assert [r["method"].split(":")[0] for r in rows] == ["fp16", "int4"], rows
assert rows[0]["reference"] and not rows[1]["reference"]
for r in rows:
    tasks = r["longbench_tasks"]
    assert list(sorted(tasks)) == ["passage_retrieval_en", "qasper", "trec"], tasks
    for v in tasks.values():
        assert 0.0 <= v <= 100.0 and round(v, 2) == v, tasks
    mean = sum(tasks.values()) / 3
    assert abs(r["longbench_avg"] - mean) < 1e-9, (r["longbench_avg"], mean)
    assert r["ppl"] is None and r["peak_gpu_bytes"] is None, r
    assert r["tokens_per_s"] > 0, r
# Memory: fp16 = 2 sides x 6 layers x 6 heads x 64 x 2 bytes; int4 (codes + scales/zeros) less.
assert rows[0]["kv_bytes_per_token"] == 9216.0 and rows[0]["effective_bits"] == 16.0, rows[0]
assert rows[1]["kv_bytes_per_token"] < 9216.0 / 3, rows[1]
# The budget column, recomputed from datasets/kv_memory.h's formula for fp16:
# weights + 9216 T + workspace(min(T, 8192)) <= 1 GiB, workspace per token
# 6*384 + 4*(384+768) + 4*384 + 10*1024 + 4 = 18692, logits 1024*32000*4, + 2*384.
budget = 1 << 30
assert j["memory_budget_bytes"] == budget
ws = 8192 * 18692 + 1024 * 32000 * 4 + 768
T = (budget - j["weights_bytes"] - ws) // 9216
assert T > 8192 and rows[0]["max_context_tokens"] == T, (rows[0]["max_context_tokens"], T)
assert rows[1]["max_context_tokens"] > 3 * T, rows[1]
lb = j["longbench"]
assert lb["window"] == 160 and [t["task"] for t in lb["tasks"]] == ["trec", "qasper", "passage_retrieval_en"], lb["tasks"]
assert all(t["max_new_tokens"] == 8 for t in lb["tasks"])
qasper = [t for t in lb["runs"][0]["tasks"] if t["task"] == "qasper"][0]
assert qasper["metric"] == "qa_f1" and qasper["truncated_rows"] == 2, qasper  # its template alone is > 152 tokens
for run in lb["runs"]:
    for t in run["tasks"]:
        assert 2 <= t["generated_tokens"] <= 16 and t["rows"] == 2, t
json.dump({r["method"].split(":")[0]: r["longbench_tasks"]["trec"] for r in rows}, open(sys.argv[1] + ".trec", "w"))
print("ok   longbench", [(r["method"].split(":")[0], r["longbench_avg"], r["longbench_tasks"]) for r in rows])
print("ok   memory: fp16 ctx@1GiB", rows[0]["max_context_tokens"], "int4", rows[1]["max_context_tokens"],
      "int4 B/token", rows[1]["kv_bytes_per_token"])
PY
grep -q '<svg' "$TMP/lb.svg" || fail "no plot"
grep -q 'LongBench average score' "$TMP/lb.svg" || fail "plot y label"

# trec alone, text output: the same trec scores as in the three-task run, the task column,
# n/a for the peak GPU memory on the CPU.
run_tool "$TMP/trec.txt" "$TMP/trec.err" "$EVAL" "${common[@]}" --tasks trec --kv int4 --memory-budget 1GiB
[[ $RC -eq 0 ]] || fail "trec: exit $RC: $(tail -3 "$TMP/trec.err")"
cat "$TMP/trec.txt"
head -2 "$TMP/trec.txt" | tail -1 | grep -q 'trec' || fail "no trec column"
head -2 "$TMP/trec.txt" | tail -1 | grep -q 'peak GPU MiB' || fail "no peak column"
grep -q '^fp16 (ref) .* n/a ' "$TMP/trec.txt" || fail "peak GPU is not n/a on the CPU"
python3 - "$TMP/lb.json.trec" "$TMP/trec.txt" <<'PY'
import json, sys
want = json.load(open(sys.argv[1]))
lines = open(sys.argv[2]).read().splitlines()
got = {l.split()[0]: float(l.split()[-1]) for l in lines[2:] if l.strip()}
got = {k.split(":")[0]: v for k, v in got.items()}
assert got == want, (got, want)
print("ok   trec alone = trec among three tasks:", got)
PY

# Errors: one line each, naming the file or option.
expect_one_error no_dir "--longbench-dir" -- "$EVAL" --task longbench --model "$TESTBED" --backend cpu
expect_one_error missing_task "nosuch.jsonl" -- "$EVAL" "${common[@]}" --tasks nosuch
mkdir -p "$TMP/zh"
echo '{"input": "q", "context": "c", "answers": ["a"], "all_classes": null, "dataset": "dureader", "_id": "z", "length": 1}' \
  >"$TMP/zh/dureader.jsonl"
expect_one_error chinese "dureader" -- "$EVAL" --task longbench --model "$TESTBED" --backend cpu --longbench-dir "$TMP/zh"
expect_one_error small_window "--seqlen" "new tokens" -- "$EVAL" --task longbench --model "$TESTBED" --backend cpu \
  --longbench-dir "$FIX" --tasks lcc --seqlen 60
expect_one_error bad_budget "--memory-budget" -- "$EVAL" "${common[@]}" --tasks trec --memory-budget 12XB
echo "PASS"
