#!/usr/bin/env python3
"""Opens kvq profiles (.kvqp) and calibration files (.kvqc) with Hugging Face's own
`safetensors` package, without any kvq code: lists the tensors, reads them, parses the
metadata JSON and checks what docs/profile-format.md promises a foreign reader:

  * metadata: format "kvq-profile" / "kvq-calibration", format_version "1.x",
    byte_order "little", and the document under "profile" / "calibration" is JSON;
  * every tensor is F32 and readable; the document's tensors_sha256 equals the digest
    recomputed here from the documented byte stream (names sorted, name\\0 dtype\\0,
    u64 rank, u64 dims, u64 nbytes, data);
  * profiles: the layers array has fingerprint.layers entries and the tensors required
    by keys/values/options are present with the documented shapes.

Usage: python3 tests/python/check_profile.py FILE... [--framework numpy|pt]
(default numpy; pt needs torch). Exit 0 when every file passes, 1 otherwise.
Example on the GPU machine: python3 tests/python/check_profile.py tests/data/profiles/*.kvq[pc]
"""
import argparse
import hashlib
import json
import struct
import sys

from safetensors import safe_open


def tensor_bytes(t, framework):
    """(little-endian bytes, shape) of a tensor that must be float32."""
    if framework == "pt":
        import torch
        assert t.dtype == torch.float32, f"dtype {t.dtype} is not float32"
        t = t.contiguous().cpu().numpy()
    assert t.dtype.name == "float32", f"dtype {t.dtype} is not float32"
    return t.astype("<f4", copy=False).tobytes(order="C"), list(t.shape)


def digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors, key=lambda s: s.encode("utf-8")):
        data, shape = tensors[name]
        h.update(name.encode("utf-8") + b"\0" + b"F32\0")
        h.update(struct.pack("<Q", len(shape)))
        for d in shape:
            h.update(struct.pack("<Q", d))
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def expected_profile_tensors(doc):
    fp = doc["fingerprint"]
    d = fp["kv_heads"] * fp["head_dim"]
    out = {}
    for i in range(fp["layers"]):
        over = doc["layers"][i]
        for kind, key in (("k", "keys"), ("v", "values")):
            s = dict(doc[key])
            s.update(over.get(key, {}))
            if s["nuq"]:
                out[f"layers.{i}.{kind}.signposts"] = [2 ** s["bits"]]
            if s["range"] == "static":
                out[f"layers.{i}.{kind}.channel_range"] = [2, d]
            if kind == "k" and s["outlier_fraction"] > 0:
                out[f"layers.{i}.k.outlier_threshold"] = [2, d]
            if s["qnorm"]:
                out[f"layers.{i}.{kind}.qnorm"] = [2]
            if s["smoothing"]:
                out[f"layers.{i}.{kind}.smooth_delta"] = [d]
                out[f"layers.{i}.{kind}.smooth_scale"] = [d]
            if s["fp8_scale"] == "per_head":
                out[f"layers.{i}.{kind}.fp8_scale"] = [fp["kv_heads"]]
        if doc["options"]["balancer"]:
            out[f"layers.{i}.balancer"] = [d]
    return out


def check(path, framework):
    with safe_open(path, framework=framework) as f:
        meta = f.metadata() or {}
        names = list(f.keys())
        tensors = {n: tensor_bytes(f.get_tensor(n), framework) for n in names}
    fmt = meta.get("format")
    assert fmt in ("kvq-profile", "kvq-calibration"), f"format {fmt!r}"
    major, minor = meta["format_version"].split(".")
    assert major == "1", f"format_version {meta['format_version']}"
    assert meta["byte_order"] == "little", meta["byte_order"]
    key = "profile" if fmt == "kvq-profile" else "calibration"
    doc = json.loads(meta[key])
    assert doc["tensors_sha256"] == digest(tensors), "tensors_sha256 does not match the tensors"
    fp = doc["fingerprint"]
    summary = f"{fmt} {meta['format_version']}"
    if fmt == "kvq-profile":
        assert len(doc["layers"]) == fp["layers"], "layers entries != fingerprint.layers"
        want = expected_profile_tensors(doc)
        for n, shape in want.items():
            assert n in tensors, f"missing tensor {n}"
            assert tensors[n][1] == shape, f"{n}: shape {tensors[n][1]}, expected {shape}"
        summary += f", method {doc['method']}, keys {doc['keys']['bits']} bits, values {doc['values']['bits']} bits"
    else:
        summary += f", {doc['complete_layers']}/{fp['layers']} layers, nuq bits {doc['nuq_bits']}"
    print(f"{path}: ok: {summary}; model {fp['architecture']} {fp['layers']}x{fp['heads']}/{fp['kv_heads']}x{fp['head_dim']}")
    for n in sorted(names):
        data, shape = tensors[n]
        vals = struct.unpack(f"<{len(data) // 4}f", data)
        lo = min(vals) if vals else 0.0
        hi = max(vals) if vals else 0.0
        print(f"  {n:34s} F32 {str(shape):12s} min {lo:<12.6g} max {hi:.6g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--framework", choices=["numpy", "pt"], default="numpy")
    args = ap.parse_args()
    bad = 0
    for p in args.files:
        try:
            check(p, args.framework)
        except Exception as e:  # report every file, then fail
            print(f"{p}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
