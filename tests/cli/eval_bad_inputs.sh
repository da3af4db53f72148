#!/usr/bin/env bash
# Issue 2, acceptance 4, at the command line: every bad input gives one error line naming
# the file and the problem, exit code 1, and no crash. Inputs are crafted here with
# python3 (stdlib only) from the shared testbed model.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"
printf 'A few words of text to evaluate on, long enough for a window of sixteen tokens or more.\n' > "$TMP/ok.txt"
common=(--dataset "$TMP/ok.txt" --seqlen 16 --max-windows 1 --backend cpu)

# model_dir NAME: a folder with the testbed's config and tokenizer, weights to be added.
model_dir() {
  mkdir -p "$TMP/$1"
  cp "$TESTBED/config.json" "$TESTBED/tokenizer.model" "$TMP/$1/"
  [[ -f "$TESTBED/tokenizer_config.json" ]] && cp "$TESTBED/tokenizer_config.json" "$TMP/$1/"
  echo "$TMP/$1"
}

python3 - "$TMP" "$TESTBED" <<'PY'
import json, os, shutil, struct, sys
tmp, testbed = sys.argv[1], sys.argv[2]

def write_st(path, header, data):
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)

def folder(name):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    for f in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        if os.path.exists(os.path.join(testbed, f)):
            shutil.copy(os.path.join(testbed, f), d)
    return d

shard1 = open(os.path.join(testbed, "model-00001-of-00003.safetensors"), "rb").read()

# Truncated: a real shard cut in the middle of its data section.
open(os.path.join(folder("truncated"), "model.safetensors"), "wb").write(shard1[: len(shard1) // 2])

# Header length past the end of the file.
open(os.path.join(folder("header_past_eof"), "model.safetensors"), "wb").write(
    struct.pack("<Q", 1 << 40) + b'{"a": 1}')

# Two tensors whose bytes overlap.
write_st(os.path.join(folder("overlap"), "model.safetensors"),
         {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))

# dtype x shape != bytes.
write_st(os.path.join(folder("size_mismatch"), "model.safetensors"),
         {"a": {"dtype": "F16", "shape": [3, 5], "data_offsets": [0, 32]}}, bytes(32))

# A sharded checkpoint whose third shard is missing.
d = folder("missing_shard")
shutil.copy(os.path.join(testbed, "model.safetensors.index.json"), d)
for s in ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"):
    os.symlink(os.path.join(testbed, s), os.path.join(d, s))

# A config for an architecture kvq does not support.
d = folder("gpt2")
cfg = json.load(open(os.path.join(testbed, "config.json")))
cfg["model_type"] = "gpt2"
cfg["architectures"] = ["GPT2LMHeadModel"]
json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
for s in os.listdir(testbed):
    if s.startswith("model"):
        os.symlink(os.path.join(testbed, s), os.path.join(d, s))

# A valid file with a tensor of the wrong shape for the config.
d = folder("wrong_shape")
write_st(os.path.join(d, "model.safetensors"),
         {"model.embed_tokens.weight": {"dtype": "F16", "shape": [100, 384], "data_offsets": [0, 76800]}},
         bytes(76800))

# Datasets: empty, blank, and a JSON-lines file with a row lacking "text".
open(os.path.join(tmp, "empty.txt"), "w").close()
open(os.path.join(tmp, "wiki.test.raw"), "w").write(" \n \n")
open(os.path.join(tmp, "c4.jsonl"), "w").write('{"text": "fine"}\n{"url": "x"}\n')
PY

expect_one_error truncated "truncated/model.safetensors" "offset" -- \
  "$EVAL" --model "$TMP/truncated" "${common[@]}"
expect_one_error header_past_eof "header_past_eof/model.safetensors" "header" -- \
  "$EVAL" --model "$TMP/header_past_eof" "${common[@]}"
expect_one_error overlap "overlap/model.safetensors" "overlap" -- \
  "$EVAL" --model "$TMP/overlap" "${common[@]}"
expect_one_error size_mismatch "size_mismatch/model.safetensors" "30" -- \
  "$EVAL" --model "$TMP/size_mismatch" "${common[@]}"
expect_one_error missing_shard "model-00003-of-00003.safetensors" -- \
  "$EVAL" --model "$TMP/missing_shard" "${common[@]}"
expect_one_error unsupported_model_type "gpt2/config.json" "gpt2" -- \
  "$EVAL" --model "$TMP/gpt2" "${common[@]}"
expect_one_error wrong_shape "wrong_shape/model.safetensors" "model.embed_tokens.weight" -- \
  "$EVAL" --model "$TMP/wrong_shape" "${common[@]}"
expect_one_error missing_model "$TMP/no-such-model" -- \
  "$EVAL" --model "$TMP/no-such-model" "${common[@]}"

# A tokenizer whose vocabulary does not match the embedding rows, both ways round.
expect_one_error vocab_small "tok512.bin" "512" "32000" -- \
  "$EVAL" --model "$TESTBED" --tokenizer "$STORIES/tok512.bin" "${common[@]}"
expect_one_error vocab_large "tokenizer.model" "32000" "512" -- \
  "$EVAL" --model "$STORIES/stories260K.bin" --tokenizer "$TESTBED/tokenizer.model" "${common[@]}"

# Datasets.
expect_one_error empty_dataset "$TMP/empty.txt" "empty" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/empty.txt" --seqlen 16
expect_one_error blank_wikitext "$TMP/wiki.test.raw" "empty" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/wiki.test.raw" --seqlen 16
expect_one_error jsonl_no_text "$TMP/c4.jsonl" "line 2" "\"text\"" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/c4.jsonl" --seqlen 16
expect_one_error missing_dataset "$TMP/none.txt" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/none.txt" --seqlen 16
expect_one_error short_dataset "fewer than one window" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/ok.txt" --seqlen 1000
expect_one_error seqlen_past_window "--seqlen" "1024" -- \
  "$EVAL" --model "$TESTBED" --dataset "$TMP/ok.txt" --seqlen 2000
echo "PASS"
