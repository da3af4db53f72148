#!/usr/bin/env python3
"""Timeline of one packed-KV decode from a KVQ_KV_TRACE=1 build (h71, session 8).

kernels/kv_decode_stream.cu, compiled with -DKVQ_KV_TRACE=1 (device builds only), stores
%globaltimer per block of stream_kernel (entry, after the q set-up, stage 0's keys landed,
end of every stage, before / after the partial writes, %smid) and per block of the split-K
combine (entry, after griddepcontrol.wait, end), and writes the last 32 calls to
$KVQ_KV_TRACE_OUT (default kv_trace.bin) at process exit (trace_dump() there has the layout).
This script reads that file and prints, per call and as the median over the calls it keeps
(--skip drops the first calls: kvq-kvbench's 3 warm-ups), in microseconds from the first
block's entry:
  ramp      last block's entry (every block of a batch-1 grid is resident at once)
  qset      entry -> after the q set-up (median over blocks)
  land0     entry -> stage 0's keys and meta landed (median)
  stage     one stage round, stages 1.. (median over blocks and stages); stage0: land0 -> end
  epi       end of the last stage -> before the partial writes (median); pw: the writes
  end_med   a block's end (median); end_max: the last block's end; tail = end_max - end_med
  c_in      first combine block's entry (PDL: early); c_go: last griddepcontrol.wait release
  total     last combine block's end; comb = total - end_max
Standard library only (no numpy), so it runs on the device or here.
Usage: kv_trace_summary.py kv_trace.bin [--skip 3] [--per-call]
"""
import argparse
import statistics
import struct
import sys

EV = 64           # kTraceEv
META = 12         # int32 fields of TraceMeta
MAX_BLOCKS = 1024  # kTraceBlocks
MAX_HEADS = 256   # kTraceHeads
FIELDS = ("call", "slot", "gx", "gy", "gz", "span", "splits", "ks", "bits", "g", "heads", "max_len")


def read_trace(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"KVQTRC01":
        raise SystemExit(f"{path}: offset 0: not a kv trace (magic {data[:8]!r})")
    (count,) = struct.unpack_from("<i", data, 8)
    off = 12
    calls = []
    for _ in range(count):
        if off + 4 * META > len(data):
            raise SystemExit(f"{path}: offset {off}: truncated call header")
        meta = dict(zip(FIELDS, struct.unpack_from(f"<{META}i", data, off)))
        off += 4 * META
        nb = min(meta["gx"] * meta["gy"] * meta["gz"], MAX_BLOCKS)
        nh = min(meta["heads"], MAX_HEADS)
        need = 8 * (nb * EV + nh * 4)
        if off + need > len(data):
            raise SystemExit(f"{path}: offset {off}: call {meta['call']} needs {need} bytes, "
                             f"{len(data) - off} left")
        ev = struct.unpack_from(f"<{nb * EV}Q", data, off)
        off += 8 * nb * EV
        cev = struct.unpack_from(f"<{nh * 4}Q", data, off)
        off += 8 * nh * 4
        blocks = [ev[i * EV:(i + 1) * EV] for i in range(nb)]
        comb = [cev[i * 4:(i + 1) * 4] for i in range(nh)]
        calls.append((meta, blocks, comb))
    return calls


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(meta, blocks, comb):
    work = [b for b in blocks if b[6] > 0]  # blocks with stages (others wrote empty partials)
    t0 = min(b[0] for b in blocks)
    us = lambda t: (t - t0) / 1e3
    st = []
    for b in work:
        n = min(b[6], EV - 8)
        st += [(b[8 + j] - b[8 + j - 1]) / 1e3 for j in range(1, n)]
    last = [b[8 + min(b[6], EV - 8) - 1] for b in work]
    sms = {}
    for b in blocks:
        sms.setdefault(b[1], []).append(b)
    r = {
        "blocks": len(blocks),
        "sms": len(sms),
        "max_per_sm": max(len(v) for v in sms.values()),
        "stages": med([b[6] for b in work]),
        "ramp": max(us(b[0]) for b in blocks),
        "qset": med([(b[2] - b[0]) / 1e3 for b in work]),
        "land0": med([(b[3] - b[0]) / 1e3 for b in work]),
        "stage0": med([(b[8] - b[3]) / 1e3 for b in work]),
        "stage": med(st),
        "stage_p90": sorted(st)[int(0.9 * (len(st) - 1))] if st else float("nan"),
        "epi": med([(b[4] - l) / 1e3 for b, l in zip(work, last)]),
        "pw": med([(b[5] - b[4]) / 1e3 for b in work]),
        "end_med": med([us(b[5]) for b in blocks]),
        "end_max": max(us(b[5]) for b in blocks),
    }
    r["tail"] = r["end_max"] - r["end_med"]
    if comb:
        r["c_in"] = min(us(c[0]) for c in comb)
        r["c_go"] = max(us(c[1]) for c in comb)
        r["total"] = max(us(c[2]) for c in comb)
        r["comb"] = r["total"] - r["end_max"]
    return r


COLS = ("blocks", "sms", "max_per_sm", "stages", "ramp", "qset", "land0", "stage0", "stage", "stage_p90",
        "epi", "pw", "end_med", "end_max", "tail", "c_in", "c_go", "total", "comb")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--skip", type=int, default=3, help="first calls to drop (warm-ups)")
    ap.add_argument("--per-call", action="store_true")
    args = ap.parse_args()
    calls = read_trace(args.trace)
    groups = {}
    for meta, blocks, comb in calls[args.skip:]:
        key = (meta["bits"], meta["g"], meta["max_len"], meta["gx"], meta["gy"], meta["gz"], meta["span"], meta["ks"])
        groups.setdefault(key, []).append(summarize(meta, blocks, comb))
        if args.per_call:
            s = groups[key][-1]
            print(f"call {meta['call']}: " + " ".join(f"{c} {s[c]:.2f}" for c in COLS if c in s))
    for (bits, g, ml, gx, gy, gz, span, ks), rs in groups.items():
        print(f"int{bits} G={g} max_len={ml} grid={gx}x{gy}x{gz} span={span} stage={ks}: {len(rs)} calls, "
              f"medians (us from the first block's entry)")
        for c in COLS:
            vals = [r[c] for r in rs if c in r]
            if vals:
                print(f"  {c:10s} {med(vals):9.2f}   (min {min(vals):.2f}, max {max(vals):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
