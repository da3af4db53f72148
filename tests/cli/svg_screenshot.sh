#!/usr/bin/env bash
# The --plot SVG opens in a browser (issue 7, acceptance 3): a tiny compare run on
# stories260K (4 windows of 45 tokens, fp16 / int8 / int2) writes the SVG, headless
# Chromium renders it (scripts/screenshot_svg.sh), and the PNG is decoded here (python3
# stdlib: zlib + the PNG filters) and checked: the asked size, a white background, dark
# axis/text pixels, the blue profile dots and the red fp16 diamond, and enough distinct
# colours that it cannot be a blank or an error page. Skipped (77) without Chromium; the
# script does not install it here (KVQ_NO_INSTALL=1).
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"
[[ -f $STORIES/stories260K.bin ]] || { echo "stories260K not found: skipped"; exit 77; }
head -c 4000 "$KVQ_SHARED/datasets/kvq-docs/valid.txt" >"$TMP/story.txt"

run_tool "$TMP/c.out" "$TMP/c.err" "$EVAL" --task ppl --model "$STORIES/stories260K.bin" \
  --tokenizer "$STORIES/tok512.bin" --dataset "$TMP/story.txt" --seqlen 45 --max-windows 4 --backend cpu \
  --compare int8 --compare int2 --plot "$TMP/plot.svg"
[[ $RC -eq 0 ]] || fail "compare run exit $RC: $(tail -3 "$TMP/c.err")"
[[ -s $TMP/plot.svg ]] || fail "no SVG written"

set +e
KVQ_NO_INSTALL=1 bash "$KVQ_SOURCE_DIR/scripts/screenshot_svg.sh" "$TMP/plot.svg" "$TMP/plot.png" 800x520 \
  >"$TMP/shot.out" 2>"$TMP/shot.err"
rc=$?
set -e
[[ $rc -eq 77 ]] && { cat "$TMP/shot.err"; echo "no chromium: skipped"; exit 77; }
[[ $rc -eq 0 ]] || fail "screenshot_svg.sh exit $rc: $(cat "$TMP/shot.err")"

python3 - "$TMP/plot.png" <<'PY'
import struct, sys, zlib

data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0], "bad CRC"
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat += body
    elif kind == b"IEND":
        break
    pos += 12 + n
w, h, depth, ctype, _, _, interlace = ihdr
assert (w, h) == (800, 520), (w, h)
assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat)
stride = w * bpp
assert len(raw) == h * (stride + 1), "IDAT size"
rows, prev = [], bytearray(stride)
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else:
            assert f == 0, "filter %d" % f
    rows.append(bytes(line))
    prev = line
counts = {}
for line in rows:
    for x in range(w):
        px = line[x * bpp:x * bpp + 3]
        counts[px] = counts.get(px, 0) + 1
total = w * h
white = counts.get(b"\xff\xff\xff", 0)
dark = sum(n for p, n in counts.items() if max(p) < 80)
# Blue dots (#1f77b4) and the red diamond (#d62728), allowing for anti-aliased edges.
blue = sum(n for p, n in counts.items() if p[2] > 150 and p[0] < 80 and p[1] < 160)
red = sum(n for p, n in counts.items() if p[0] > 180 and p[1] < 80 and p[2] < 80)
print("png %dx%d: %d colours, white %.1f%%, dark %d px, blue %d px, red %d px"
      % (w, h, len(counts), 100.0 * white / total, dark, blue, red))
assert white > 0.6 * total, "background is not mostly white"
assert dark > 500, "no axes or text"
assert blue >= 2 * 50, "fewer than two profile dots"  # a dot of r=5 covers ~78 px
assert red >= 50, "no fp16 diamond"
assert len(counts) >= 16, "too few colours for a rendered plot"
PY
echo "PASS"
