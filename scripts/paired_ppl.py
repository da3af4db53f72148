"""Perplexity differences paired over evaluation windows (scripts/calib_table.sh, calib_dev_grid.sh).

Two kvq-eval rows that saw the same windows differ by much less noise than their PPLs do,
because most of a window's NLL is shared. With d_w = nll_a(w) - nll_b(w), mean m and sample
standard deviation s over n windows, PPL_a - PPL_b = PPL_b (exp(m) - 1), and the delta method
gives its standard error as PPL_b exp(m) s / sqrt(n).
"""
import math


def paired(a, b):
    """'PPL(a) - PPL(b) +- se' for two kvq-eval --format json rows; without per-window NLLs
    of equal length (older files, one window) only the difference."""
    wa, wb = a.get("window_nll"), b.get("window_nll")
    if not wa or not wb or len(wa) != len(wb) or len(wa) < 2:
        return "%+.3f" % (a["ppl"] - b["ppl"])
    n = len(wa)
    d = [x - y for x, y in zip(wa, wb)]
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    return "%+.3f +- %.3f" % (a["ppl"] - b["ppl"], b["ppl"] * math.exp(m) * sd / math.sqrt(n))


if __name__ == "__main__":
    # Self-check: identical rows differ by 0 +- 0; a constant NLL shift has no spread.
    r = {"ppl": math.exp(2.0), "window_nll": [1.9, 2.0, 2.1]}
    assert paired(r, r) == "+0.000 +- 0.000"
    s = {"ppl": math.exp(2.1), "window_nll": [2.0, 2.1, 2.2]}
    assert paired(s, r).endswith("+- 0.000"), paired(s, r)
    assert paired({"ppl": 3.0}, {"ppl": 2.5}) == "+0.500"
    print("paired_ppl: ok")
