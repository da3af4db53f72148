#!/usr/bin/env bash
# kvq-calibrate on the testbed model (HF, 6 layers, CPU backend, the head of kvq-docs
# calib.txt, 2 x 128 tokens): two uninterrupted runs (2 threads and 1 thread) give identical bytes; a
# run killed with SIGKILL after its first layer checkpoint and resumed with --resume gives
# the same bytes again, reusing the spilled sequences and the finished layers; kvq-convert
# makes a KVQuant profile from the file. About 45 s on 2 busy cores.
source "$(dirname "$0")/common.bash"
CAL="$KVQ_BIN/kvq-calibrate"
[[ -x $CAL ]] || fail "kvq-calibrate not built"
[[ -f $TESTBED/config.json ]] || { echo "skip: no testbed model at $TESTBED"; exit 77; }

# The first 300,000 bytes of calib.txt: tokenizing the whole 1.5 MB file takes about 5 s
# per run on 2 busy cores (measured), and this test runs the tool five times.
head -c 300000 "$KVQ_SHARED/datasets/kvq-docs/calib.txt" > "$TMP/calib-head.txt"
args=(--model "$TESTBED" --dataset "$TMP/calib-head.txt" --nseq 2 --seqlen 128 --bits 2,3,4 --backend cpu)

# 1. Determinism: two runs (and two thread counts).
run_tool "$TMP/a.json" "$TMP/a.err" "$CAL" "${args[@]}" --threads 2 -o "$TMP/a.kvqc" --format json
[[ $RC -eq 0 ]] || fail "run a: exit $RC: $(cat "$TMP/a.err")"
[[ $(json_get "$TMP/a.json" complete_layers) == 6 ]] || fail "run a: $(cat "$TMP/a.json")"
grep -q 'fit (layer)' "$TMP/a.err" || fail "run a: no progress on stderr"
run_tool "$TMP/b.json" "$TMP/b.err" "$CAL" "${args[@]}" --threads 1 -o "$TMP/b.kvqc" --format json
[[ $RC -eq 0 ]] || fail "run b: exit $RC: $(cat "$TMP/b.err")"
cmp "$TMP/a.kvqc" "$TMP/b.kvqc" || fail "two runs (2 and 1 threads) differ"
echo "ok   two runs identical: $(json_get "$TMP/a.json" output_sha256 | cut -c1-16), mean loss $(json_get "$TMP/a.json" mean_loss)"

# 2. Resume after a kill: SIGKILL as soon as the first layer's checkpoint exists.
"$CAL" "${args[@]}" --threads 2 -o "$TMP/c.kvqc" > /dev/null 2> "$TMP/c.err" &
pid=$!
for ((i = 0; i < 3000; ++i)); do
  [[ -e $TMP/c.kvqc ]] && break
  kill -0 "$pid" 2> /dev/null || break
  sleep 0.02
done
kill -KILL "$pid" 2> /dev/null || true
wait "$pid" 2> /dev/null || true
[[ -e $TMP/c.kvqc ]] || fail "no checkpoint was written: $(cat "$TMP/c.err")"
[[ -d $TMP/c.kvqc.work ]] || echo "note: the run finished before the kill; resume has nothing left to do"
run_tool "$TMP/c.json" "$TMP/c2.err" "$CAL" "${args[@]}" --threads 2 -o "$TMP/c.kvqc" --resume --format json
[[ $RC -eq 0 ]] || fail "resume: exit $RC: $(cat "$TMP/c2.err")"
resumed=$(json_get "$TMP/c.json" resumed_layers)
[[ $resumed -ge 1 ]] || fail "resume: no finished layer reused: $(cat "$TMP/c.json")"
if [[ $resumed -lt 6 ]]; then
  [[ $(json_get "$TMP/c.json" resumed_sequences) == 2 ]] || fail "resume: spilled sequences not reused: $(cat "$TMP/c.json")"
fi
cmp "$TMP/a.kvqc" "$TMP/c.kvqc" || fail "killed and resumed run differs from an uninterrupted one"
[[ ! -e $TMP/c.kvqc.work ]] || fail "work folder left behind after resume"
echo "ok   killed after layer checkpoint, resumed $resumed layers: identical bytes"

# 3. Resume refuses a file made with other settings: exit 1, one error line naming the
# file (after the configuration lines), and the file is left as it was.
cp "$TMP/a.kvqc" "$TMP/d.kvqc"
run_tool "$TMP/d.out" "$TMP/d.err" "$CAL" "${args[@]}" --seed 7 -o "$TMP/d.kvqc" --resume
[[ $RC -eq 1 ]] || fail "resume with another seed: exit $RC: $(cat "$TMP/d.err")"
[[ $(grep -c '^kvq-calibrate: error: ' "$TMP/d.err") -eq 1 ]] || fail "resume with another seed: $(cat "$TMP/d.err")"
grep -q "^kvq-calibrate: error: $TMP/d.kvqc: cannot resume" "$TMP/d.err" || fail "resume with another seed: $(cat "$TMP/d.err")"
cmp "$TMP/a.kvqc" "$TMP/d.kvqc" || fail "a refused resume changed the file"
echo "ok   --resume with another --seed refused: $(grep error: "$TMP/d.err")"

# 4. The file converts to a profile for this model.
if [[ -x $KVQ_BIN/kvq-convert ]]; then
  run_tool "$TMP/p.out" "$TMP/p.err" "$KVQ_BIN/kvq-convert" --calib "$TMP/a.kvqc" --model "$TESTBED" \
    --method kvquant --bits 2 -o "$TMP/kvquant2.kvqp"
  [[ $RC -eq 0 && -s $TMP/kvquant2.kvqp ]] || fail "kvq-convert: exit $RC: $(cat "$TMP/p.err")"
  echo "ok   kvq-convert: kvquant 2-bit profile"
fi
echo "ok"
