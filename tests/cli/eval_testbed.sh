#!/usr/bin/env bash
# kvq-eval on the testbed HF checkpoint (sharded fp16) and WikiText-2 by name: the
# token count of the standard protocol (341,469, reference.json), the window bookkeeping
# of --max-windows, JSON fields, and that batching windows does not change the result.
# Kept to a few short windows: the full-length PPL checks against reference.json are in
# tests/lib and docs/results.md.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

run_tool "$TMP/a.json" "$TMP/a.err" "$EVAL" --task ppl --model "$TESTBED" --dataset wikitext2 \
  --seqlen 128 --max-windows 3 --backend cpu --format json
[[ $RC -eq 0 ]] || fail "exit $RC: $(cat "$TMP/a.err")"
run_tool "$TMP/b.json" "$TMP/b.err" env KVQ_DATA="$WIKITEXT" "$EVAL" --model "$TESTBED" \
  --seqlen 128 --max-windows 3 --batch 2 --backend cpu --format json
[[ $RC -eq 0 ]] || fail "exit $RC: $(cat "$TMP/b.err")"
python3 - "$TMP/a.json" "$TMP/b.json" <<'PY'
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ref = json.load(open(__import__("os").environ["KVQ_SHARED"] + "/models/kvq-testbed-llama2-23m/reference.json"))
for r in (a, b):
    assert r["task"] == "ppl" and r["protocol"] == "wikitext", r
    assert r["tokens_available"] == ref["wikitext2_test_tokens"] == 341469, r["tokens_available"]
    assert r["windows"] == 3 and r["windows_available"] == 341469 // 128, r
    assert r["tokens_scored"] == 3 * 127, r
    assert r["seqlen"] == 128 and r["model"] == "kvq-testbed-llama2-23m"
    assert math.isfinite(r["ppl"]) and 1 < r["ppl"] < 32000, r["ppl"]
    assert abs(math.log(r["ppl"]) - r["nll"]) < 1e-12
    for k in ("tokens_per_s", "seconds", "backend", "threads", "kvq", "dataset_path"):
        assert k in r, k
assert a["batch"] == 1 and b["batch"] == 2
# Batching reorders fp32 GEMM rows, not the arithmetic of a row: allow the fp32 rounding
# of a 384-wide dot product chain through 6 layers, far below the 1e-3 PPL resolution.
assert abs(a["nll"] - b["nll"]) < 1e-5, (a["nll"], b["nll"])
print("ok   testbed 3 windows of 128: ppl %.4f (batch 1), %.4f (batch 2)" % (a["ppl"], b["ppl"]))
PY
grep -q 'data check size and sha256 match the manifest' "$TMP/a.err" || fail "no manifest check: $(cat "$TMP/a.err")"
grep -q '^\[3/3\] ppl' "$TMP/a.err" || fail "no final progress line"
echo "PASS"
