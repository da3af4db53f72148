#!/usr/bin/env python3
"""Reference ids for Llama-3-style and Qwen2-style byte-level pipelines, which no shared
tokenizer.json uses: the SmolLM tokenizer.json with its pre-tokenizer replaced by
Sequence[Split(REGEX, Isolated), ByteLevel(use_regex=false)] (Llama 3 / Qwen2 layout), a
BOS template, and ignore_merges on for the Llama 3 variant. tests/formats/tokenizer_hf_test.cpp
builds the same variants from the same file. Run where `tokenizers` is installed (the GPU
machine):

  python3 tests/data/tokenizer/gen_variant_vectors.py SMOLLM/tokenizer.json VALID20K.txt OUTDIR [cases.json]

expected-smollm-{llama3,qwen2}split.json were made so on the GPU machine (tokenizers 0.23.2),
with VALID20K.txt = the first 20,000 bytes of ../shared/datasets/kvq-docs/valid.txt.
"""
import json
import sys

import tokenizers

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def variant(base, regex, ignore_merges):
    j = json.loads(json.dumps(base))
    j["truncation"] = None
    j["padding"] = None
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    j["model"]["ignore_merges"] = ignore_merges
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                                              "tokens": ["<|endoftext|>"]}}}]}
    return j


def main():
    base = json.load(open(sys.argv[1], encoding="utf-8"))
    text = open(sys.argv[2], encoding="utf-8").read()
    cases = json.load(open(sys.argv[4] if len(sys.argv) > 4 else "tests/data/tokenizer/cases.json",
                           encoding="utf-8"))
    extra = ["Don'T WE'LL they'RE x'ſ", "abc 1234567 12\r\n\r\n  x", "  \n\t\n  y!!\n\nz"]
    for name, regex, ig in (("smollm-llama3split", LLAMA3, True), ("smollm-qwen2split", QWEN2, False)):
        tok = tokenizers.Tokenizer.from_str(json.dumps(variant(base, regex, ig)))
        res = {"source": f"tokenizers {tokenizers.__version__}", "cases": []}
        for s in cases + extra:
            plain = tok.encode(s, add_special_tokens=False).ids
            res["cases"].append({"text": s, "ids": plain, "ids_with_special": tok.encode(s).ids,
                                 "decoded": tok.decode(plain, skip_special_tokens=False)})
        res["texts"] = {"kvq-docs-valid-20k": tok.encode(text, add_special_tokens=False).ids}
        with open(f"{sys.argv[3]}/expected-{name}.json", "w", encoding="utf-8") as f:
            json.dump(res, f, ensure_ascii=False, indent=0)
        print(name, len(res["cases"]))


if __name__ == "__main__":
    main()
