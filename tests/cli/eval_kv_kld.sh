#!/usr/bin/env bash
# kvq-eval --task kld on stories260K (two 45-token windows, CPU): exact per-token
# KL(p_fp16 || p_quant) computed window by window (no stored reference). KL of fp16
# against itself is exactly 0 with top-1 agreement 1; KL grows as bits drop
# (int8 < int4 < int2); --max-kld turns a regression into exit 3.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

text="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She ran to the ball and kicked it very hard. The ball flew over the fence and into the garden of an old man. Lily was sad because she wanted her ball back."
printf '%s' "$text" > "$TMP/story.txt"
common=(--task kld --model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin"
        --dataset "$TMP/story.txt" --seqlen 30 --max-windows 2 --backend cpu)

run_tool "$TMP/k.json" "$TMP/k.err" "$EVAL" "${common[@]}" --compare fp16 --compare int8 --compare int4 \
  --compare int2 --format json
[[ $RC -eq 0 ]] || fail "kld exit $RC: $(cat "$TMP/k.err")"
# The same windows through the ppl task: the quantized rows' PPL must agree.
run_tool "$TMP/p.json" "$TMP/p.err" "$EVAL" "${common[@]/kld/ppl}" --kv int2 --format json
[[ $RC -eq 0 ]] || fail "ppl exit $RC: $(cat "$TMP/p.err")"
python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
rows = json.load(open(f"{d}/k.json"))["rows"]
p = json.load(open(f"{d}/p.json"))
ref, i8, i4, i2 = rows
assert ref["reference"] and ref["kld_mean"] == 0 and ref["kld_p99"] == 0 and ref["top1"] == 1, ref
assert 0 < i8["kld_mean"] < i4["kld_mean"] < i2["kld_mean"], [r["kld_mean"] for r in rows]
assert i2["top1"] < 1 and i2["kld_median"] <= i2["kld_p99"], i2
# PPL from the kld pass (log-softmax in double) vs the ppl task (fp32 log-softmax): same
# logits, so they differ only by fp32 rounding of ~58 log-probs of a few nats (< 1e-5 rel).
assert abs(i2["ppl"] / p["ppl"] - 1) < 1e-5, (i2["ppl"], p["ppl"])
for r in rows:
    print("ok   %-42s KLD mean %.6f median %.6f p99 %.6f top1 %.3f ppl %.4f" % (r["method"], r["kld_mean"], r["kld_median"], r["kld_p99"], r["top1"], r["ppl"]))
PY

# A single --kv gives fp16 + that method; --max-kld: int8 within 0.01, int2 beyond it.
run_tool "$TMP/ok.out" "$TMP/ok.err" "$EVAL" "${common[@]}" --kv int8 --max-kld 0.01
[[ $RC -eq 0 ]] || fail "int8 within --max-kld: exit $RC: $(cat "$TMP/ok.err")"
grep -q '^fp16 (ref)' "$TMP/ok.out" || fail "no fp16 row: $(cat "$TMP/ok.out")"
run_tool "$TMP/bad.out" "$TMP/bad.err" "$EVAL" "${common[@]}" --kv int2 --max-kld 0.01
[[ $RC -eq 3 ]] || fail "int2 beyond --max-kld: exit $RC"
grep -q 'threshold failed: int2:.*kld_mean' "$TMP/bad.err" || fail "metric not named: $(cat "$TMP/bad.err")"
echo "PASS"
