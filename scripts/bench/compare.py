"""Side-by-side table of kvq-gpubench --json and hf_bench.py --out (markdown).

  python3 scripts/bench/compare.py kvq.json hf.json
"""
import json, sys

kvq, hf = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
h = {(r["model"], r["context"]): r for r in hf["rows"]}
print(f"device: {kvq['device']}; copy {kvq['copy_gbps']:.0f} GB/s; kvq git {kvq['git']}; "
      f"torch {hf['torch']}, transformers {hf['transformers']}")
print()
print("| model | context | prefill tok/s kvq | prefill tok/s HF | x | decode ms kvq | decode ms HF | x | "
      "decode GB/step | floor ms | kvq GB/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in kvq["rows"]:
    o = h.get((r["model"], r["context"]))
    hp = f"{o['prefill_tok_s']:.0f}" if o else "-"
    hx = f"{r['prefill_tok_s'] / o['prefill_tok_s']:.2f}" if o else "-"
    hd = f"{o['decode_ms']:.2f}" if o else "-"
    dx = f"{o['decode_ms'] / r['decode_ms']:.2f}" if o else "-"
    print(f"| {r['model']} | {r['context']} | {r['prefill_tok_s']:.0f} | {hp} | {hx} | {r['decode_ms']:.2f} | {hd} | "
          f"{dx} | {r['decode_bytes'] / 1e9:.2f} | {r['decode_floor_ms']:.2f} | {r['decode_gbps']:.0f} |")
