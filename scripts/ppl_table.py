#!/usr/bin/env python3
"""Markdown table from kvq-eval --task ppl --format json files (scripts/ppl_table.sh).

Rows keep the order of the files' numeric suffix; dPPL is taken against the `fp16` row
(else the unquantized one). Usage: ppl_table.py FILE.json...
"""
import json
import re
import sys


def index(path):
    m = re.search(r"_(\d+)\.json$", path)
    return int(m.group(1)) if m else 0


def main(paths):
    rows = []
    for p in sorted(paths, key=index):
        try:
            with open(p) as f:
                rows.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"ppl_table.py: skipping {p}: {e}", file=sys.stderr)
    if not rows:
        sys.exit("ppl_table.py: no results")
    ref = next((r for r in rows if r.get("kv", "").startswith("fp16")), None) or \
        next((r for r in rows if not r.get("kv")), rows[0])
    first = rows[0]
    print(f"model {first['model']}, {first['dataset']} ({first['protocol']}), seqlen "
          f"{first['seqlen']}, {first['windows']} windows ({first['tokens_scored']} predictions), "
          f"backend {first['backend']}, kvq {first['kvq']['revision']}")
    print()
    print("| --kv | bits/elem | KV bytes/token | PPL | dPPL | tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        kv = r.get("kv") or "none"
        bits = r.get("bits_per_element")
        bpt = r.get("kv_bytes_per_token")
        d = r["ppl"] - ref["ppl"]
        print(f"| {kv} | {bits if bits is None else f'{bits:.3f}'} | "
              f"{'-' if bpt is None else f'{bpt:.0f}'} | {r['ppl']:.3f} | {d:+.3f} | "
              f"{r['tokens_per_s']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
