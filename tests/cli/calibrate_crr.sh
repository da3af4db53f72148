#!/usr/bin/env bash
# kvq-calibrate --crr (WKVQuant cross-block reconstruction) end to end on stories260K (CPU):
# the JSON summary has a loss before/after per block and bit width, none above its
# "before" and nearly all below; --threads 1 and 2 give identical bytes; a run stopped after 2 layers and
# resumed with --crr gives the same bytes again; kvq-convert makes wkvquant profiles from
# it; and the calibrated 2-bit profile's perplexity on held-out text (kvq-docs valid.txt)
# is at most that of the uncalibrated codec (delta 0, s 1).
source "$(dirname "$0")/common.bash"
CAL="$KVQ_BIN/kvq-calibrate"
CONVERT="$KVQ_BIN/kvq-convert"
EVAL="$KVQ_BIN/kvq-eval"
[[ -x $CONVERT && -x $EVAL ]] || { echo "kvq-convert / kvq-eval not built: skipped"; exit 77; }
model="$STORIES/stories260K.bin"
tok="$STORIES/tok512.bin"
data="$KVQ_SHARED/datasets/kvq-docs/calib.txt"

args=(--model "$model" --tokenizer "$tok" --dataset "$data" --nseq 3 --seqlen 96 --bits 2,3 --backend cpu
      --crr --crr-window 3 --crr-epochs 2)
run_tool "$TMP/a.json" "$TMP/a.err" "$CAL" "${args[@]}" --threads 2 -o "$TMP/a.kvqc" --format json
[[ $RC -eq 0 ]] || fail "kvq-calibrate --crr: exit $RC: $(cat "$TMP/a.err")"
grep -q 'crr 2 bits, block 4: window loss' "$TMP/a.err" || fail "no per-block CRR line on stderr: $(cat "$TMP/a.err")"
python3 - "$TMP/a.json" <<'EOF' || fail "CRR summary: $(cat "$TMP/a.json")"
import json, sys
j = json.load(open(sys.argv[1]))["crr"]
assert j["window"] == 3 and j["group"] == 8, j
assert [b["bits"] for b in j["per_bits"]] == [2, 3], j
for b in j["per_bits"]:
    assert len(b["loss_before"]) == 5, b
    # A window whose training ends above its start keeps its starting parameters (the
    # guard in calib/crr.cpp): never worse, and most windows strictly lower.
    pairs = list(zip(b["loss_before"], b["loss_after"]))
    assert all(after <= before for before, after in pairs), (b["bits"], pairs)
    assert sum(after < before for before, after in pairs) >= 4, (b["bits"], pairs)
    assert b["window0_init_loss"] < b["window0_identity_loss"], b
EOF

run_tool "$TMP/b.out" "$TMP/b.err" "$CAL" "${args[@]}" --threads 1 -o "$TMP/b.kvqc"
[[ $RC -eq 0 ]] || fail "second run: $(cat "$TMP/b.err")"
cmp "$TMP/a.kvqc" "$TMP/b.kvqc" || fail "--threads 2 and 1 differ"

run_tool "$TMP/c.out" "$TMP/c.err" "$CAL" "${args[@]}" --threads 2 -o "$TMP/c.kvqc" --stop-after-layers 2
run_tool "$TMP/c.out" "$TMP/c.err" "$CAL" "${args[@]}" --threads 2 -o "$TMP/c.kvqc" --resume
[[ $RC -eq 0 ]] || fail "resume: $(cat "$TMP/c.err")"
cmp "$TMP/a.kvqc" "$TMP/c.kvqc" || fail "stopped + resumed run differs"

run_tool "$TMP/p.out" "$TMP/p.err" "$CONVERT" --calib "$TMP/a.kvqc" --method wkvquant --bits 2,3 -o "$TMP/wkv{bits}.kvqp"
[[ $RC -eq 0 ]] || fail "kvq-convert wkvquant: $(cat "$TMP/p.err")"
[[ -s $TMP/wkv2.kvqp && -s $TMP/wkv3.kvqp ]] || fail "no profiles: $(ls "$TMP")"

head -c 60000 "$KVQ_SHARED/datasets/kvq-docs/valid.txt" > "$TMP/valid.txt"
common=(--task ppl --model "$model" --tokenizer "$tok" --dataset "$TMP/valid.txt" --protocol text --seqlen 128
        --max-windows 6 --backend cpu --format json)
ppl() { python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.loads(t[t.index("{"):])["ppl"])' "$1"; }
run_tool "$TMP/d2.json" "$TMP/d2.err" "$EVAL" "${common[@]}" --kv wkvquant:bits=2
[[ $RC -eq 0 ]] || fail "eval default: $(cat "$TMP/d2.err")"
run_tool "$TMP/c2.json" "$TMP/c2.err" "$EVAL" "${common[@]}" --profile "$TMP/wkv2.kvqp"
[[ $RC -eq 0 ]] || fail "eval calibrated: $(cat "$TMP/c2.err")"
d2=$(ppl "$TMP/d2.json"); c2=$(ppl "$TMP/c2.json")
echo "stories260K valid.txt 6x128 PPL, wkvquant 2 bits: default $d2, CRR-calibrated $c2"
python3 -c "import sys; sys.exit(0 if float('$c2') <= float('$d2') else 1)" || fail "calibrated PPL $c2 > default $d2"
echo "ok"
