"""Statistics of the evaluation: intervals for verdicts beyond noise, and the over-optimisation laws.

Plain python, no I/O:

- `mean_interval(x)`: the mean and its normal-approximation 95% half-width z·sd/√n (sd with n − 1);
- `paired_interval(a, b)`: the same for the paired differences a_i − b_i (both policies on the same
  prompts: the prompt-to-prompt variance cancels, so the interval is much narrower than comparing
  two unpaired means);
- `wilson_interval(k, n)`: the Wilson score interval of a proportion k/n (stays inside [0, 1] and
  behaves near 0 and 1 and for small n, where the normal approximation does not);
- `fit_best_of_n(d, r)`, `fit_rl(d, r)`: least-squares fits of Gao, Schulman and Hilton (2022,
  arXiv 2210.10760) "Scaling laws for reward model over-optimization": with d = √KL(π‖π_init),
  the gold (here: oracle) score gain of best-of-n is R(d) = d(α − β d) and that of RL is
  R(d) = d(α − β ln d); both are linear in (α, β), so ordinary least squares through the
  origin solves them exactly;
- `peak(α, β, form)`: the d where the fitted curve is highest, and `curve(α, β, form, d)` its value.
"""

from __future__ import annotations

import math

FORMS = ("best_of_n", "rl")


def mean_interval(x: list[float], z: float = 1.96) -> tuple[float, float]:
    """(mean, z·sd/√n) of x, sd with n − 1 (normal approximation; z = 1.96: 95%).
    n = 1 has no spread estimate: the half-width is inf. Raises ValueError on an empty x."""
    n = len(x)
    if n == 0:
        raise ValueError("mean_interval of no values")
    mean = sum(x) / n
    if n == 1:
        return mean, math.inf
    var = sum((v - mean) ** 2 for v in x) / (n - 1)
    return mean, z * math.sqrt(var / n)


def paired_interval(a: list[float], b: list[float], z: float = 1.96) -> tuple[float, float]:
    """(mean of a_i − b_i, z·sd(a_i − b_i)/√n): the paired difference of two systems scored on
    the same n items (a and b aligned item by item, equal length), normal approximation."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval needs aligned items: {len(a)} vs {len(b)} values")
    return mean_interval([x - y for x, y in zip(a, b)], z)


def stratified_paired_interval(a: dict[str, list[float]], b: dict[str, list[float]], z: float = 1.96) -> tuple[float, float]:
    """The paired difference of two systems' macro-average over groups (tasks) of items:
    (1/G)·Σ_g mean_g(a_i − b_i), and its half-width z·√(Σ_g s_g²/n_g)/G, s_g the sd of group g's
    differences (n − 1). Groups are independent item sets; a and b are aligned item by item within
    each group. Raises ValueError when the groups or their lengths differ, or there are none."""
    if set(a) != set(b) or not a:
        raise ValueError(f"stratified_paired_interval needs the same groups: {sorted(a)} vs {sorted(b)}")
    means, var = [], 0.0
    for g in a:
        if not a[g]:
            raise ValueError(f"stratified_paired_interval: group {g!r} has no items")
        m, half = paired_interval(a[g], b[g], z)
        means.append(m)
        var += (half / z) ** 2 if math.isfinite(half) else math.inf
    return sum(means) / len(means), z * math.sqrt(var) / len(means)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval (lo, hi) of the proportion k/n:
    (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n); None when n = 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # k = 0 and k = n bound the interval at 0 and 1 exactly (the formula does, but for rounding)
    return (0.0 if k <= 0 else max(0.0, mid - half)), (1.0 if k >= n else min(1.0, mid + half))


def _fit2(x1: list[float], x2: list[float], r: list[float]) -> tuple[float, float]:
    """Least squares of r ≈ α x1 + β x2 (no intercept): the 2×2 normal equations."""
    s11 = sum(u * u for u in x1)
    s22 = sum(v * v for v in x2)
    s12 = sum(u * v for u, v in zip(x1, x2))
    t1 = sum(u * y for u, y in zip(x1, r))
    t2 = sum(v * y for v, y in zip(x2, r))
    det = s11 * s22 - s12 * s12
    if len(r) < 2 or det <= 1e-12 * max(1e-300, s11 * s22):
        raise ValueError("the fit needs at least two points at different d > 0")
    return (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det


def fit_best_of_n(d: list[float], r: list[float]) -> tuple[float, float]:
    """(α, β) of R(d) = d(α − β d) = α d − β d² by least squares (Gao et al.'s best-of-n form;
    d = √KL, r the gold score gain over the initial policy). Raises ValueError when fewer than
    two distinct d > 0 are given."""
    pts = [(x, y) for x, y in zip(d, r) if x > 0]
    alpha, minus_beta = _fit2([x for x, _ in pts], [x * x for x, _ in pts], [y for _, y in pts])
    return alpha, -minus_beta


def fit_rl(d: list[float], r: list[float]) -> tuple[float, float]:
    """(α, β) of R(d) = d(α − β ln d) = α d − β d ln d by least squares (Gao et al.'s RL form);
    points at d = 0 are skipped (ln 0; R(0) = 0 holds anyway). Raises ValueError when fewer than
    two distinct d > 0 are given."""
    pts = [(x, y) for x, y in zip(d, r) if x > 0]
    alpha, minus_beta = _fit2([x for x, _ in pts], [x * math.log(x) for x, _ in pts], [y for _, y in pts])
    return alpha, -minus_beta


def curve(alpha: float, beta: float, form: str, d: float) -> float:
    """R(d) of the fitted law: d(α − β d) (best_of_n) or d(α − β ln d) (rl; R(0) = 0)."""
    if form == "best_of_n":
        return d * (alpha - beta * d)
    if form == "rl":
        return 0.0 if d <= 0 else d * (alpha - beta * math.log(d))
    raise ValueError(f"form must be one of {FORMS}, not {form!r}")


def peak(alpha: float, beta: float, form: str) -> float | None:
    """The d = √KL where the fitted curve is highest: best_of_n R' = α − 2βd = 0 -> d* = α/(2β)
    (0 when α <= 0: the gain falls from the start); rl R' = α − β(ln d + 1) = 0 ->
    d* = exp(α/β − 1) (inf past float range). None when β <= 0 (the curve never turns down)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if beta <= 0:
        return None
    if form == "best_of_n":
        return max(0.0, alpha / (2 * beta))
    e = alpha / beta - 1
    return math.inf if e > 700 else math.exp(e)
