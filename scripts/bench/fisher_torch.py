#!/usr/bin/env python3
"""The PyTorch + scikit-learn calibration pipeline that kvq-calibrate is benchmarked
against (issue 5, benchmark point 5; scripts/bench/fisher_bench.sh runs both).

What it does, per KVQuant's released calibration (SqueezeAILab/KVQuant,
quant/kvquant/simquant_module_quantizer.py, read for its settings, not copied):
  1. Fisher information: for each calibration sequence (the same token windows kvq used,
     --starts), a forward pass of LlamaForCausalLM(x, labels=x) and torch.autograd.grad of
     the loss with respect to every k_proj and v_proj output (keys pre-RoPE, as kvq);
     the squares are summed over sequences on the GPU in fp32 (the Fisher information), and
     each sequence's squares are kept on the CPU with its k/v activations for step 2 (the
     k-means weight of a point is its own squared gradient, as in kvq's fit; KVQuant's
     SimQuant.add_batch keeps the activations the same way).
  2. Per layer, keys and values separately: outlier thresholds by np.percentile (keys per
     channel over tokens, values per token over channels; 1% outliers in total, 0.5% per
     tail), normalisation to [-1, 1], outliers and the first --sink tokens of each sequence
     left out, then sklearn KMeans(n_clusters=2^b, random_state=0, n_init="auto",
     max_iter=50).fit(points, sample_weight=fisher) for b in --bits (KVQuant's settings).
Timings: the model load, the Fisher pass and the fit separately (CUDA synchronised);
peak GPU memory = torch.cuda.max_memory_allocated(). One JSON object on stdout.

--make-synthetic DIR writes a random-weight LlamaForCausalLM with Llama-2-7B layer shapes
(hidden 4096, 32 heads, intermediate 11008, vocab 32000; --layers of them) in fp16 as a
Hugging Face folder, with the tokenizer.model of --tokenizer-from, so that kvq-calibrate and
this script run on the very same weights.
"""
import argparse, json, os, shutil, sys, time

import numpy as np
import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_synthetic(args):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                      num_key_value_heads=32, num_hidden_layers=args.layers, vocab_size=32000,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).half()  # HF init: normal(0, 0.02) weights, unit norms
    m.save_pretrained(args.make_synthetic, safe_serialization=True)
    shutil.copy(os.path.join(args.tokenizer_from, "tokenizer.model"), args.make_synthetic)
    for extra in ("tokenizer_config.json",):
        src = os.path.join(args.tokenizer_from, extra)
        if os.path.exists(src):
            shutil.copy(src, args.make_synthetic)
    print(json.dumps({"synthetic": args.make_synthetic, "layers": args.layers,
                      "parameters": sum(p.numel() for p in m.parameters())}))


def tokenize(model_dir, text_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    return [sp.bos_id()] + sp.encode(open(text_path, encoding="utf-8").read())


def fisher_pass(m, ids, starts, L, dev):
    """Sum over sequences of (dL/d k_proj out)^2 and (dL/d v_proj out)^2 per layer, and the
    k/v activations (CPU, fp32), by torch.autograd.grad on the projection outputs."""
    layers = m.model.layers
    outs = {}
    hooks = []
    for i, layer in enumerate(layers):
        for name, mod in (("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
            def hook(module, inp, out, key=(i, name)):
                outs[key] = out
            hooks.append(mod.register_forward_hook(hook))

    # The graph must reach every projection output: the embeddings require grad (the
    # weights do not, so no weight gradients are computed).
    def embed_hook(module, inp, out):
        return out.detach().requires_grad_(True)
    hooks.append(m.model.embed_tokens.register_forward_hook(embed_hook))
    fisher, acts, wts, losses = {}, {}, {}, []
    for s in starts:
        x = torch.tensor(ids[s:s + L], device=dev)[None]
        outs.clear()
        loss = m(x, labels=x).loss
        keys = sorted(outs)
        grads = torch.autograd.grad(loss, [outs[k] for k in keys])
        for k, g in zip(keys, grads):
            sq = g[0].float() ** 2
            fisher[k] = fisher[k] + sq if k in fisher else sq
            acts.setdefault(k, []).append(outs[k][0].detach().float().cpu())
            wts.setdefault(k, []).append(sq.cpu())
        losses.append(float(loss))
        del loss, grads
    for h in hooks:
        h.remove()
    return fisher, acts, wts, losses


def fit_layer(act, fish, kind, sink, outliers, bits):
    """KVQuant's NUQ fit for one layer and kind: act, fish [N, L, C] (fish: squared gradients)."""
    from sklearn.cluster import KMeans
    N, L, C = act.shape
    t = 1.0 - outliers / 2.0
    data = act[:, sink:, :].reshape(-1, C).numpy()
    w = fish[:, sink:, :].reshape(-1, C).numpy()
    axis = 0 if kind == "k" else 1  # keys per channel, values per token
    hi = np.percentile(data, t * 100, axis=axis)
    lo = np.percentile(data, (1 - t) * 100, axis=axis)
    if axis == 1:
        hi, lo = hi[:, None], lo[:, None]
    rng = (hi - lo) / 2
    zero = (hi + lo) / 2
    norm = (data - zero) / rng
    keep = ~((norm > 1) | (norm < -1))
    pts = norm[keep].reshape(-1, 1)
    wts = w[keep]
    res = {}
    for b in bits:
        km = KMeans(n_clusters=2 ** b, random_state=0, n_init="auto", max_iter=50).fit(pts, sample_weight=wts)
        res[b] = sorted(float(c) for c in km.cluster_centers_.ravel())
    return res, int(pts.shape[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--text", help="calibration text (tokenized as BOS + SentencePiece, as kvq)")
    ap.add_argument("--starts", help="comma-separated sequence starts (kvq-calibrate's JSON 'starts')")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--bits", default="2,3,4")
    ap.add_argument("--outliers", type=float, default=0.01)
    ap.add_argument("--sink", type=int, default=1)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--make-synthetic")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-from")
    args = ap.parse_args()
    if args.make_synthetic:
        return make_synthetic(args)
    if not (args.model and args.text and args.starts):
        sys.exit("fisher_torch: give --model, --text and --starts")
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    t_all = time.perf_counter()
    ids = tokenize(args.model, args.text)
    starts = [int(s) for s in args.starts.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    from transformers import LlamaForCausalLM
    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    try:
        m = LlamaForCausalLM.from_pretrained(args.model, dtype=dtype)
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=dtype)
    m = m.to(dev).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    sync()
    t_load = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fisher, acts, wts, losses = fisher_pass(m, ids, starts, args.seqlen, dev)
    sync()
    t_fisher = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    t0 = time.perf_counter()
    layers = []
    for (i, kind) in sorted(fisher):
        act = torch.stack(acts[(i, kind)])                     # [N, L, C]
        fish = torch.stack(wts[(i, kind)])                     # each point's squared gradient
        res, npts = fit_layer(act, fish, kind, args.sink, args.outliers, bits)
        layers.append({"layer": i, "kind": kind, "points": npts, "signposts": res})
    t_fit = time.perf_counter() - t0
    out = {"tool": "fisher_torch", "model": os.path.basename(os.path.normpath(args.model)), "dtype": args.dtype,
           "sequences": len(starts), "seqlen": args.seqlen, "starts": starts, "mean_loss": float(np.mean(losses)),
           "load_seconds": t_load, "fisher_seconds": t_fisher, "fit_seconds": t_fit,
           "pipeline_seconds": t_fisher + t_fit, "wall_seconds": time.perf_counter() - t_all,
           "gpu_peak_bytes": peak, "torch": torch.__version__,
           "sklearn": __import__("sklearn").__version__, "device": torch.cuda.get_device_name(0),
           "layers": layers}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
