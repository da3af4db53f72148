#!/usr/bin/env bash
# scripts/paired_ppl.py (the paired standard error in calib_table.sh / calib_dev_grid.sh):
# its self-check, and a hand-computed case: window NLL differences 0.1, 0.2, 0.3 against a
# row of PPL 10 give mean 0.2, sd 0.1, so 10 (exp(0.2) - 1) = 2.214 +- 10 exp(0.2) 0.1 / sqrt(3) = 0.705.
source "$(dirname "$0")/common.bash"
cd "$KVQ_SOURCE_DIR/scripts"
python3 paired_ppl.py > "$TMP/self" || fail "paired_ppl.py self-check failed"
got=$(python3 -c '
import math
from paired_ppl import paired
b = {"ppl": 10.0, "window_nll": [2.0, 2.0, 2.0]}
a = {"ppl": 10.0 * math.exp(0.2), "window_nll": [2.1, 2.2, 2.3]}
print(paired(a, b))')
[[ $got == "+2.214 +- 0.705" ]] || fail "paired(): expected '+2.214 +- 0.705', got '$got'"
echo "paired_ppl: ok ($got)"
