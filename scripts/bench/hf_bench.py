"""PyTorch + transformers baseline for kvq-gpubench: prefill tokens/s and decode ms/token
on the same shapes (SDPA attention, fp16, DynamicCache), timed with CUDA events.

  python3 scripts/bench/hf_bench.py --model DIR | --synthetic llama2-7b ... --contexts 1024,4096 --out hf.json

Synthetic models use LlamaConfig with the published shapes and random weights created on
the GPU (nothing is downloaded); their outputs are meaningless, their speed is not.
"""
import argparse, json, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama2-7b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0),
    "llama2-13b": dict(num_hidden_layers=40, hidden_size=5120, num_attention_heads=40, num_key_value_heads=40,
                       intermediate_size=13824, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0),
    "llama3-8b": dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "testbed-23m": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=6, num_key_value_heads=6,
                        intermediate_size=1024, vocab_size=32000, max_position_embeddings=1024,
                        tie_word_embeddings=True),
}


def timed(fn):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    r = fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / 1e3, r


@torch.no_grad()
def bench(label, m, contexts, steps, reps, synthetic, out):
    V = m.config.vocab_size
    warm = torch.arange(512, device="cuda")[None] % V
    m(warm, logits_to_keep=1)
    for C in contexts:
        if not synthetic and C + steps > m.config.max_position_embeddings:
            continue
        x = (torch.arange(C, device="cuda")[None] * 7919 + 13) % V
        m(x, logits_to_keep=1, use_cache=False)  # untimed: per-shape kernel selection and allocations
        pre = []
        for _ in range(reps):
            t, _ = timed(lambda: m(x, logits_to_keep=1, use_cache=False))
            pre.append(t)
        pre.sort()
        tp = pre[len(pre) // 2]
        r = m(x, logits_to_keep=1, use_cache=True)
        cache = r.past_key_values
        nxt = r.logits[:, -1].argmax(-1, keepdim=True)
        dec = []
        for _ in range(steps):
            t0 = time.perf_counter()
            r = m(nxt, past_key_values=cache, use_cache=True)
            nxt = r.logits[:, -1].argmax(-1, keepdim=True)
            nxt.item()  # synchronizes, as kvq's step returns logits to the host
            dec.append(time.perf_counter() - t0)
            cache = r.past_key_values
        dec.sort()
        td = dec[len(dec) // 2]
        row = dict(model=label, context=C, prefill_s=tp, prefill_tok_s=C / tp, decode_ms=td * 1e3)
        print(json.dumps(row), flush=True)
        out.append(row)
        del cache, r
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--synthetic", action="append", default=[])
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="hf_bench.json")
    a = ap.parse_args()
    contexts = [int(c) for c in a.contexts.split(",")]
    out = []
    for d in a.model:
        m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float16, attn_implementation="sdpa").cuda().eval()
        bench(d.rstrip("/").split("/")[-1][:14], m, contexts, a.decode_steps, a.reps, False, out)
        del m
        torch.cuda.empty_cache()
    for s in a.synthetic:
        cfg = LlamaConfig(**SHAPES[s], rms_norm_eps=1e-5)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(1)
        with torch.device("cuda"):
            torch.set_default_dtype(torch.float16)
            m = LlamaForCausalLM(cfg).eval()
            torch.set_default_dtype(torch.float32)
        bench("synthetic:" + s, m, contexts, a.decode_steps, a.reps, True, out)
        del m
        torch.cuda.empty_cache()
    json.dump({"torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "device": torch.cuda.get_device_name(), "rows": out}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
