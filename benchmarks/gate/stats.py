"""Statistics (standard library only, so ``compare`` runs on a bare install)."""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def noise(groups: list[list[float]], pooled: tuple[float, int] | None = None) -> tuple[float | None, int]:
    """The variance of one unit's value (a run's, a round's) and its degrees of freedom: from the spread
    within ``groups`` (values that should agree), or ``pooled``, (variance, df) of all benchmarks of the
    comparison together, where that is larger: a steady neighbour never makes a noisy benchmark look
    steady, and the pool lends its degrees of freedom to a benchmark whose own few units happen to agree.
    (None, 0) when nothing measures it."""
    ss, df = sum_of_squares(groups)
    variance = ss / df if df else None
    if pooled and pooled[1] and (variance is None or pooled[0] > variance):
        variance, df = pooled
    return variance, df


def run_model(base_runs: list[float], cur_runs: list[float], history: list[float] = (),
              pooled: tuple[float, int] | None = None) -> RunModel:
    """The run-level comparison of run values (log medians) of the base and the current side.

    ``history``: run values of earlier baselines on the same machine (one group: conservative, since code
    changes between them only widen the spread). ``pooled``: see ``noise``."""
    log_ratio = sum(cur_runs) / len(cur_runs) - sum(base_runs) / len(base_runs)
    variance, df = noise([base_runs, cur_runs, list(history)], pooled)
    if variance is None:
        return RunModel(log_ratio, None, 0, (len(base_runs), len(cur_runs)))
    se = math.sqrt(variance * (1 / len(base_runs) + 1 / len(cur_runs)))
    return RunModel(log_ratio, se, df, (len(base_runs), len(cur_runs)))


def round_model(round_values: list[float]) -> RunModel:
    """Interleaved rounds (``ab``): each value is one round's log ratio, head over base, from one base and
    one head process taking turns. The pairs of a round share their two processes' luck (memory layout,
    the core they got, a neighbour's burst lasting the round), so the round, not the pair, is the unit:
    the change is the mean of the round values and its test Student's t on them (one sample, rounds minus
    one degrees of freedom). Each benchmark's own rounds only: unlike separate runs, which share the
    machine's state of the moment, one benchmark's rounds say nothing about another's (one round of c
    caught by a burst, 27% off, would hide a 9% slowdown of train.py in a pool)."""
    k = len(round_values)
    log_ratio = sum(round_values) / k
    variance, df = noise([list(round_values)])
    if variance is None:
        return RunModel(log_ratio, None, 0, (k, k))
    return RunModel(log_ratio, math.sqrt(variance / k), df, (k, k))
