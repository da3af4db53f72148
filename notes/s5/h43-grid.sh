#!/usr/bin/env bash
# h43's one device call (session 5): build kvq-calibrate/convert/eval from a clean archive
# of the commit under test (.carry/h43-src), then scripts/calib_dev_grid.sh on the three
# development texts (notes/s5/results-h43.md). Never touches WikiText-2.
# Results: $OUT/table.md, $OUT/log, $OUT/grid.tgz (calibrate/eval JSON).
set -uo pipefail
root=$PWD
src=$root/.carry/h43-src
sh=$root/.carry/shared
dev=$root/.carry/h43/dev
g=/tmp/h43-grid
finish() { tar -czf "$OUT/grid.tgz" -C "$g" $(cd "$g" 2>/dev/null && ls *.json *.err 2>/dev/null) 2>/dev/null; }
trap finish EXIT
mkdir -p "$g"
cd "$src"
t0=$(date +%s)
{ cmake -S . -B /tmp/h43-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real >/dev/null &&
  cmake --build /tmp/h43-build --target kvq-calibrate kvq-convert kvq-eval -j16; } > "$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"; nvidia-smi --query-gpu=name --format=csv,noheader
bash scripts/calib_dev_grid.sh --bin /tmp/h43-build/tools --backend cuda --out "$g" \
  --model "$sh/models/kvq-testbed-llama2-23m" --calib-data "$sh/datasets/kvq-docs/calib.txt" \
  --dev "$sh/datasets/kvq-docs/valid.txt:40" --dev "$dev/licenses.txt:40" --dev "$dev/perldiag.txt:40" \
  --variant 'n16=--nseq 16' --variant 'n32=--nseq 32' \
  --variant 'n16-clip99=--nseq 16 --fisher-clip 0.99' --variant 'n32-clip99=--nseq 32 --fisher-clip 0.99' \
  --variant 'n16-mix30=--nseq 16 --uniform-mix 0.3' 2>&1 > "$OUT/table.md" | tee "$OUT/log"
cat "$OUT/table.md"
echo "total: $(( $(date +%s) - t0 )) s"
