#!/usr/bin/env python3
"""Reference pieces for the regex-free pre-tokenizer scanners (formats/tokenizer_split.cpp),
from Python's third-party `regex` module, which supports \\p{L}, (?i:...) and lookahead like
Oniguruma does. Writes split-vectors.json: for each pattern, a list of
{"text": ..., "pieces": [...]} for hand-picked strings and random strings drawn from a pool
of awkward characters (all assigned before Unicode 14, the version of kvq's tables).

  python3 tests/data/tokenizer/gen_split_vectors.py > tests/data/tokenizer/split-vectors.json

Seed 20261122; 400 random strings of length 1..40 per pattern.
"""
import json
import random
import sys

import regex

PATTERNS = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

FIXED = [
    "Hello world", "I'm sure you've seen it, haven't you? They'LL say we'D won.",
    "  two leading", "trailing   ", "a  \n\n  b", "x \r\n\ty", "1234567 12 3", "ab12cd",
    "'s's'S'ſ", "!!! ??? ...\n\n", "\u00a0nbsp\u3000ideo\u2028ls", "\x1c\x1d sep", "",
    "e\u0301 combining", "zero\u200dwidth", "\u00bd\u00b2 \u2163 \u0663", "caf\u00e9 na\u00efve",
    "\u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4", "emoji \U0001F600\U0001F389 ok", "tabs\t\t\tend\t",
]

POOL = (list(" " * 6) + list("\t\n\r\x0b\x0c\x1c\x85\u00a0\u2028\u3000") + list("aZeSs") +
        ["\u017f", "\u00e9", "\u00df", "\u0416", "\u65e5", "\uac00"] + list("0179") +
        ["\u00b2", "\u00bd", "\u2163", "\u0663"] + list("''''.,!-_#") +
        ["\u0301", "\u200d", "\u00ad", "\U0001F600", "\u2014"] + ["re", "ve", "ll", "LL", "D", "m", "T"])


def main() -> None:
    rng = random.Random(20261122)
    texts = list(FIXED)
    for _ in range(400):
        texts.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
    out = {"source": f"regex {regex.__version__}", "seed": 20261122, "patterns": {}}
    for name, pat in PATTERNS.items():
        rx = regex.compile(pat)
        cases = []
        for t in texts:
            pieces = rx.findall(t)
            assert "".join(pieces) == t, (name, t)
            cases.append({"text": t, "pieces": pieces})
        out["patterns"][name] = {"regex": pat, "cases": cases}
    json.dump(out, sys.stdout, ensure_ascii=False, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
