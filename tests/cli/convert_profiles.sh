#!/usr/bin/env bash
# kvq-convert end to end on stories260K: every method from one calibration file (a
# synthetic one under the real fingerprint, tests/data/profiles/stories260K-synthetic.kvqc),
# several profiles per call through the {method}/{bits} template, determinism (two runs,
# identical bytes), inspect (text and JSON), validate against the right and the wrong
# model, export-vllm, and calibration-free profiles from --model alone.
# common.bash: set -euo pipefail, the models' paths, a scratch $TMP removed on exit, fail().
source "$(dirname "$0")/common.bash"
bin="$KVQ_BIN/kvq-convert"
src="${KVQ_SOURCE_DIR:?}"
calib="$src/tests/data/profiles/stories260K-synthetic.kvqc"
model="$STORIES/stories260K.bin"
testbed="$TESTBED"
work="$TMP"

grep -q "^kvq-convert " <<< "$("$bin" --version)" || fail "--version"
grep -q -- "--profile" <<< "$("$bin" --help)" || fail "--help"

# The issue's own command line.
"$bin" --calib "$calib" --method kvquant --bits 3 --outliers 1% --sink 1 -o "$work/model-kvq3.kvqp" > "$work/out.txt" 2> "$work/err.txt"
grep -q "wrote $work/model-kvq3.kvqp: kvquant" "$work/out.txt" || fail "kvquant line: $(cat "$work/out.txt")"
grep -q "profile      kvquant:bits=3 -> $work/model-kvq3.kvqp" "$work/err.txt" || fail "effective configuration on stderr"

# fp8 twice with the same {method}-{bits} name must be refused (usage error, exit 2).
set +e
"$bin" --calib "$calib" --profile fp8 --profile fp8:fp8-format=e5m2 -o "$work/{method}-{bits}.kvqp" 2> "$work/err.txt"
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "duplicate output names: exit $rc"
grep -q "two profiles would be written to" "$work/err.txt" || fail "duplicate output message"

# Every method and width in one call, twice: identical bytes.
for run in a b; do
  mkdir -p "$work/$run"
  "$bin" --calib "$calib" --model "$model" --method kvquant,kivi,int,hadamard,mikv --bits 2,3,4 \
    --profile wkvquant:bits=4 --profile q8_0 --profile q4_0 --profile fp8 \
    --profile kvquant:key-bits=4,value-bits=2,qnorm=1 \
    -o "$work/$run/{method}-{bits}.kvqp" --format json > "$work/$run.json" 2>/dev/null
done
n=$(ls "$work/a" | wc -l)
[[ $n -eq 20 ]] || fail "expected 20 profiles, got $n: $(ls "$work/a")"
for f in "$work/a"/*.kvqp; do
  cmp -s "$f" "$work/b/$(basename "$f")" || fail "not deterministic: $(basename "$f")"
  "$bin" validate "$f" --model "$model" > /dev/null || fail "validate $(basename "$f")"
done
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==20, len(d); assert all(len(x["tensors_sha256"])==64 for x in d)' "$work/a.json" \
  || fail "--format json summary"

# inspect: text and JSON.
"$bin" inspect "$work/a/kvquant-3.kvqp" > "$work/inspect.txt"
grep -q "^method       kvquant" "$work/inspect.txt" || fail "inspect method"
grep -q "digest verified" "$work/inspect.txt" || fail "inspect digest"
grep -q "layers.4.k.signposts" "$work/inspect.txt" || fail "inspect tensors"
"$bin" inspect "$work/a/kvquant-3.kvqp" --format json > "$work/inspect.json"
python3 - "$work/inspect.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["format"] == "kvq-profile" and d["format_version"] == "1.0", d["format"]
p = d["profile"]
assert p["method"] == "kvquant" and p["keys"]["bits"] == 3 and p["keys"]["pre_rope"] is True
assert p["fingerprint"]["layers"] == 5 and p["fingerprint"]["rope_layout"] == "interleaved"
assert p["calibration"]["dataset"].startswith("synthetic")
names = {t["name"] for t in d["tensors"]}
assert "layers.4.k.signposts" in names and len(names) == 5 * 4, len(names)
PY
grep -q "layers       5 of 5 complete" <<< "$("$bin" inspect "$calib")" || fail "inspect calibration"

# validate: the wrong model is one line and exit 1.
set +e
"$bin" validate "$work/a/kvquant-3.kvqp" --model "$testbed" > /dev/null 2> "$work/err.txt"
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "validate wrong model: exit $rc"
[[ $(wc -l < "$work/err.txt") -le 2 ]] || fail "validate: more than error + hint lines"
grep -q "^kvq-convert: error: $work/a/kvquant-3.kvqp: profile is for another model: layers: profile has 5, model has 6$" "$work/err.txt" \
  || fail "validate message: $(cat "$work/err.txt")"

# export-vllm: per-layer scalar k_scale / v_scale, readable as safetensors.
"$bin" export-vllm --calib "$calib" -o "$work/kv_scales.safetensors" > /dev/null 2>&1
python3 - "$work/kv_scales.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
names = sorted(k for k in hdr if k != "__metadata__")
assert names == sorted(f"model.layers.{i}.self_attn.{s}_scale" for i in range(5) for s in "kv"), names
for k in names:
    assert hdr[k]["dtype"] == "F32" and hdr[k]["shape"] == [], hdr[k]
    b, e = hdr[k]["data_offsets"]
    v = struct.unpack("<f", raw[8 + n + b:8 + n + e])[0]
    assert 0 < v < 12.0 / 448 + 1e-6, (k, v)
assert hdr["__metadata__"]["format"] == "pt"
PY

# Calibration-free profiles need only the model; on the HF testbed too.
"$bin" --model "$testbed" --method kivi --bits 2 -o "$work/kivi2.kvqp" > /dev/null 2>&1
grep -q ": ok" <<< "$("$bin" validate "$work/kivi2.kvqp" --model "$testbed")" || fail "kivi2 validate"
grep -q "calibration  none" <<< "$("$bin" inspect "$work/kivi2.kvqp")" || fail "kivi2 inspect"
echo "ok"
