#!/usr/bin/env bash
# kvq-eval --kv on the llama2.c stories260K checkpoint (one 45-token window, CPU):
# simulated fp16 KV equals no quantization up to fp16 rounding of K/V, int8 stays close,
# int2 is worse than int8, and the effective bits / KV bytes per token are reported with
# metadata included.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"

text="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."
printf '%s' "$text" > "$TMP/story.txt"
common=(--task ppl --model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin"
        --dataset "$TMP/story.txt" --seqlen 45 --backend cpu --format json)

for kv in none fp16 int8 int2 kivi:bits=2; do
  args=("${common[@]}")
  [[ $kv == none ]] || args+=(--kv "$kv")
  run_tool "$TMP/$kv.json" "$TMP/$kv.err" "$EVAL" "${args[@]}"
  [[ $RC -eq 0 ]] || fail "--kv $kv: exit $RC: $(cat "$TMP/$kv.err")"
done
run_tool "$TMP/poq.json" "$TMP/poq.err" "$EVAL" "${common[@]}" --kv int2 --poq
[[ $RC -eq 0 ]] || fail "--poq: exit $RC: $(cat "$TMP/poq.err")"

python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
r = {k: json.load(open(f"{d}/{k}.json")) for k in ["none", "fp16", "int8", "int2", "kivi:bits=2", "poq"]}
# stories260K's K/V are fp32; an fp16 cache rounds each element by at most 2^-11 relative,
# which moves the mean NLL of 44 tokens by far less than 1e-3 nats (measured: see below).
d16 = abs(r["fp16"]["nll"] - r["none"]["nll"])
assert d16 < 1e-3, d16
assert r["none"]["bits_per_element"] == 16 and r["fp16"]["bits_per_element"] == 16, (r["none"], r["fp16"])
# Bits per element are the packed layout's (kernels/kv_layout.h): codes in blocks of 32
# per (token, head) row, so stories260K's head_dim 8 is padded to 32 codes, plus an fp16
# scale and zero per group of 8 channels. Per token and layer side (4 heads, 32 elements):
#   int8: 4*32*8/8 + 4*2*2 = 144 bytes -> 36 bits/element;  int2: 4*32*2/8 + 16 = 48 -> 12.
assert r["int8"]["bits_per_element"] == 36, r["int8"]["bits_per_element"]
assert r["int2"]["bits_per_element"] == 12, r["int2"]["bits_per_element"]
# stories260K: 5 layers, 4 kv heads x 8 dims: 2*5*32 = 320 elements per token.
for k in r:
    assert abs(r[k]["kv_bytes_per_token"] - r[k]["bits_per_element"] * 320 / 8) < 1e-9, k
assert r["int8"]["nll"] < r["int2"]["nll"], (r["int8"]["nll"], r["int2"]["nll"])
assert abs(r["int8"]["nll"] - r["none"]["nll"]) < abs(r["int2"]["nll"] - r["none"]["nll"])
# Past-only reaches the observer: same bits, another NLL (measured 2.631 vs 2.092 for int2
# on this window: an exact diagonal among 2-bit keys is not better here).
assert r["poq"]["poq"] is True and r["poq"]["kv"].endswith("(poq)"), r["poq"]["kv"]
assert r["poq"]["bits_per_element"] == 12 and r["poq"]["nll"] != r["int2"]["nll"], (r["poq"]["nll"], r["int2"]["nll"])
for k in r:
    print("ok   %-12s nll %.6f  bits/elem %.4f  KV bytes/token %.1f" % (k, r[k]["nll"], r[k]["bits_per_element"], r[k]["kv_bytes_per_token"]))
PY

# A bad spec is one error line naming the option, before any work.
expect_one_error bad_spec "--kv" "grup" -- "$EVAL" "${common[@]}" --kv int4:grup=32
echo "PASS"
