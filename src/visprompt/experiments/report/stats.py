"""Statistics of a report cell: Student-t confidence intervals over seeds, "clearly better".

A cell holds one number per seed (the test accuracy of each run). Its 95%
confidence interval for the mean is the Student t interval

    mean ± t_{0.975, n-1} * s / sqrt(n)

with ``s`` the sample standard deviation (n - 1 in the denominator) and ``n``
the number of seeds; a cell of one run has no interval (nothing to estimate
the spread from).

"Clearly better" (:func:`clearly_better`), the rule behind the bold best cell
of a report, is deliberately conservative: the best cell's interval lies
entirely above the runner-up's (``low(best) > high(runner-up)``: the two
intervals do not overlap). Cells of one run never qualify, on either side.
Two 95% intervals that do not overlap mean a difference well beyond the 5%
level (for large samples of equal spread, about p = 0.006), so a bold cell is
not a coin flip of the seeds; the price is that many real differences stay
unmarked.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: the confidence level of every interval in a report
LEVEL = 0.95


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student t critical value for ``n`` samples (``n - 1`` degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def t_half_width(values: Sequence[float], level: float = LEVEL) -> float | None:
    """Half width of the Student t interval of the mean of ``values``; None for fewer than 2."""
    n = len(values)
    if n < 2:
        return None
    return t_quantile(n, level) * statistics.stdev(values) / math.sqrt(n)


def interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """``(low, high)`` of the Student t interval of the mean of ``values``; None for one value."""
    half = t_half_width(values, level)
    if half is None:
        return None
    mean = statistics.fmean(values)
    return (mean - half, mean + half)


def clearly_better(best: Sequence[float], runner_up: Sequence[float]) -> bool:
    """Whether the interval of ``best`` lies wholly above that of ``runner_up`` (see module doc)."""
    a, b = interval(best), interval(runner_up)
    return a is not None and b is not None and a[0] > b[1]
