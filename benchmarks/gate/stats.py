"""Statistics (standard library only, so ``compare`` runs on a bare install)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


BOOTSTRAP_RESAMPLES = 4000



def _signed_rank_distribution(n: int) -> list[int]:
    """Number of sign patterns of ranks 1..n for each value of W+ (the sum of the positive ranks)."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):
        for w in range(len(counts) - 1, rank - 1, -1):
            counts[w] += counts[w - rank]
    return counts


def wilcoxon_signed_rank(d: list[float]) -> tuple[float, float]:
    """W+ of the differences ``d`` and the one-sided p-value for "d tends to be positive".

    Zero differences are dropped (Wilcoxon's convention); exact without ties for n <= 50, otherwise the
    normal approximation with the tie correction and a continuity correction (as scipy.stats.wilcoxon).
    """
    d = [x for x in d if x != 0]
    n = len(d)
    if not n:
        return 0.0, 1.0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks, tie_term, i = [0.0] * n, 0, 0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        tie_term += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    w = sum(r for r, x in zip(ranks, d) if x > 0)
    if tie_term == 0 and n <= 50:
        counts = _signed_rank_distribution(n)
        return w, sum(counts[math.ceil(w):]) / 2 ** n
    mean = n * (n + 1) / 4
    variance = n * (n + 1) * (2 * n + 1) / 24 - tie_term / 48
    if variance <= 0:
        return w, 1.0
    return w, 0.5 * math.erfc((w - mean - 0.5) / math.sqrt(variance) / math.sqrt(2))


def bootstrap_median(sorted_x: list[float], rng: random.Random) -> float:
    """The median of one bootstrap resample of ``sorted_x``, drawn in O(1) however long the sample.

    Resampling n values with replacement picks order statistic ceil(n u) for n uniforms u, so the
    resample's k-th smallest value is the one at the k-th smallest of n uniforms, which is Beta(k, n-k+1)
    distributed; the (k+1)-th is the smallest of the n-k uniforms above it.
    """
    n = len(sorted_x)
    k = (n + 1) // 2
    u = rng.betavariate(k, n - k + 1)
    low = sorted_x[min(n - 1, int(u * n))]
    if n % 2:
        return low
    u_next = u + (1 - u) * rng.betavariate(1, n - k)
    return (low + sorted_x[min(n - 1, int(u_next * n))]) / 2


def paired_ci(log_ratios: list[float], seed: str, level: float = 0.95,
              resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of exp(median(log_ratios)), the paired ratio."""
    rng = random.Random(seed)
    d = sorted(log_ratios)
    ratios = sorted(math.exp(bootstrap_median(d, rng)) for _ in range(resamples))
    tail = (1 - level) / 2
    return ratios[int(tail * (resamples - 1))], ratios[int((1 - tail) * (resamples - 1))]


# ----------------------------------------------------------------------------------------------------
# Student's t, for the run-level model below (math only: no scipy on a bare install)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on t_sf; 60 halvings reach double precision)."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------------------------
# Separate runs: the run as a random effect


@dataclass
class RunModel:
    """What separate runs say about a change: log(time) = benchmark + run effect + sample noise.

    A run's value is the log of its median; runs of the same code differ by a random run effect (the
    machine's state while it ran: other tenants, frequency, the host) that the samples within one run
    cannot see. Its variance is estimated from the spread of run values that should agree: the runs of
    the baseline, of the current file, earlier baselines on the same machine. The change is the mean of
    the current runs' values minus the baseline's; its standard error comes from that variance, and the
    test is Student's t with the estimate's degrees of freedom."""

    log_ratio: float
    se: float | None          # None: no degrees of freedom, the noise between runs is unknown
    df: int
    runs: tuple[int, int]     # runs on each side

    def p_slower(self) -> float | None:
        return None if self.se is None else (t_sf(self.log_ratio / self.se, self.df) if self.se > 0
                                             else float(self.log_ratio <= 0))

    def p_faster(self) -> float | None:
        return None if self.se is None else (t_sf(-self.log_ratio / self.se, self.df) if self.se > 0
                                             else float(self.log_ratio >= 0))

    def ci(self, level: float = 0.95) -> tuple[float, float] | None:
        if self.se is None:
            return None
        half = t_ppf(1 - (1 - level) / 2, self.df) * self.se
        return math.exp(self.log_ratio - half), math.exp(self.log_ratio + half)


def sum_of_squares(groups: list[list[float]]) -> tuple[float, int]:
    """Each group's squared deviations from its own mean, summed, and the degrees of freedom they carry:
    groups are sets of runs of one code on one machine (their means may differ: code changed between
    baselines of the history), so only the spread within each counts."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) >= 2:
            mean = sum(g) / len(g)
            ss += sum((x - mean) ** 2 for x in g)
            df += len(g) - 1
    return ss, df


def run_model(base_runs: list[float], cur_runs: list[float], history: list[float] = (),
              pooled: tuple[float, int] | None = None) -> RunModel:
    """The run-level comparison of run values (log medians) of the base and the current side.

    ``history``: run values of earlier baselines on the same machine (one group: conservative, since code
    changes between them only widen the spread). ``pooled``: (variance, df) of all benchmarks of the
    comparison together; a benchmark's own estimate is used when larger, so a steady neighbour never
    makes a noisy benchmark look steady, and the pool lends its degrees of freedom to a benchmark whose
    own few runs happen to agree."""
    log_ratio = sum(cur_runs) / len(cur_runs) - sum(base_runs) / len(base_runs)
    ss, df = sum_of_squares([base_runs, cur_runs, list(history)])
    variance = ss / df if df else None
    if pooled and pooled[1] and (variance is None or pooled[0] > variance):
        variance, df = pooled
    if variance is None:
        return RunModel(log_ratio, None, 0, (len(base_runs), len(cur_runs)))
    se = math.sqrt(variance * (1 / len(base_runs) + 1 / len(cur_runs)))
    return RunModel(log_ratio, se, df, (len(base_runs), len(cur_runs)))
