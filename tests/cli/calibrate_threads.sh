#!/usr/bin/env bash
# kvq-calibrate gives the same bytes for any thread count (CPU backend, stories260K,
# 3 x 256 tokens): the .kvqc files and the --fisher-out dumps of --threads 1, 2 and 3 are
# identical. The size is chosen so that every parallel path of the capture runs: 3
# sequences on 2 threads (sequences side by side, then one alone with the threads back in
# the attention-head loop), 256 x 256 x 8 heads above the backward pass's parallel
# threshold, and GEMMs that Eigen would split over threads (256 x 64 x 64 > its 50,000
# minimum task). Before calib/serial_products.h, --threads 1 and 2 differed from byte 894
# (Eigen's multi-thread depth blocking); 2, 3 and 4 agreed.
source "$(dirname "$0")/common.bash"
CAL="$KVQ_BIN/kvq-calibrate"
[[ -x $CAL ]] || fail "kvq-calibrate not built"

args=(--model "$STORIES/stories260K.bin" --tokenizer "$STORIES/tok512.bin"
      --dataset "$KVQ_SHARED/datasets/kvq-docs/calib.txt" --nseq 3 --seqlen 256 --bits 2,3,4 --backend cpu)
for t in 1 2 3; do
  run_tool "$TMP/t$t.json" "$TMP/t$t.err" "$CAL" "${args[@]}" --threads "$t" -o "$TMP/t$t.kvqc" \
    --fisher-out "$TMP/fisher$t" --format json
  [[ $RC -eq 0 ]] || fail "--threads $t: exit $RC: $(cat "$TMP/t$t.err")"
  [[ $(json_get "$TMP/t$t.json" threads) == "$t" ]] || fail "--threads $t not applied: $(json_get "$TMP/t$t.json" threads)"
done
for t in 2 3; do
  cmp "$TMP/t1.kvqc" "$TMP/t$t.kvqc" || fail ".kvqc of --threads 1 and $t differ"
  diff -r "$TMP/fisher1" "$TMP/fisher$t" > /dev/null || fail "--fisher-out of --threads 1 and $t differ"
  [[ $(json_get "$TMP/t1.json" mean_loss) == $(json_get "$TMP/t$t.json" mean_loss) ]] || fail "mean loss differs"
done
n=$(ls "$TMP/fisher1" | grep -c 'fisher.f32$')
[[ $n -eq 10 ]] || fail "expected 10 Fisher dumps (5 layers x K, V), got $n"
echo "ok   threads 1, 2, 3: identical .kvqc ($(json_get "$TMP/t1.json" output_sha256 | cut -c1-16)) and Fisher dumps"
