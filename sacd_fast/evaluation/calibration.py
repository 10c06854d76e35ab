"""The decision threshold for a target false-alarm rate, from held-out normal images.

Given the scores of n normal images the model never trained on and a target
false-alarm rate a (the share of normal images flagged as anomalous):

* when n >= 1/a - 1, the threshold is the k-th smallest score with
  k = ceil((n + 1)(1 - a)): split conformal prediction, whose guarantee needs
  no assumption about the scores' distribution (only that new normal images are
  like the held-out ones): a new normal image scores above it with probability
  at most a. The false-alarm rate such a threshold actually has is
  Beta(n + 1 - k, k)-distributed; its 5% and 95% quantiles are recorded.
* with fewer images no order statistic reaches the target (the highest of n
  scores only promises 1/(n + 1)). The threshold is then the (1 - a) quantile
  of a log-normal distribution fitted to the scores (image scores are positive
  and right-skewed), and its 5%-95% interval comes from a seeded bootstrap of
  that fit: an estimate, whose uncertainty is stated, not a guarantee.

:func:`normalized` maps raw scores to 0..1 with 0.5 at the threshold, as
anomalib does: the median normal score maps to 0, the threshold to 0.5, and a
score as far above the threshold as the threshold is above that median to 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

DEFAULT_FALSE_ALARM_RATE = 0.01
BOOTSTRAP = 2000


def conformal_rank(n: int, false_alarm_rate: float) -> int | None:
    """The 1-based rank k of the conformal threshold among n sorted scores, or None if n is too small."""
    k = math.ceil((n + 1) * (1 - false_alarm_rate))
    return k if k <= n else None


def calibrate_threshold(scores, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, seed: int = 0) -> dict:
    """The threshold for ``false_alarm_rate`` from held-out normal ``scores``, with how it was found.

    Returns ``image`` (the threshold), ``false_alarm_rate`` (the target),
    ``method`` ("conformal" or "log-normal tail"), ``interval`` (5%-95% of the
    threshold, bootstrap, for the tail fit; the scores either side of the
    conformal rank otherwise), ``false_alarm_interval`` (5%-95% of the rate the
    threshold actually has), ``observed_false_alarms`` (held-out images above
    it), ``images``, ``score_median`` and ``scores`` (kept so that another rate
    can be calibrated later without retraining).
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(scores)
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"--false-alarm-rate must be in (0, 1), got {false_alarm_rate}")
    if n < 2 or not np.isfinite(scores).all():
        raise ValueError(f"calibration needs at least 2 finite normal scores, got {n}")
    k = conformal_rank(n, false_alarm_rate)
    if k is not None:
        threshold = float(scores[k - 1])
        interval = [float(scores[max(k - 2, 0)]), float(scores[min(k, n - 1)])]
        rates = [float(stats.beta.ppf(q, n + 1 - k, k)) for q in (0.05, 0.95)]
        method = "conformal"
    else:
        z = stats.norm.ppf(1 - false_alarm_rate)
        logs = np.log(np.maximum(scores, 1e-12))
        threshold = float(np.exp(logs.mean() + z * logs.std(ddof=1)))
        resampled = np.random.default_rng(seed).choice(logs, (BOOTSTRAP, n))
        mean, sd = resampled.mean(1), np.maximum(resampled.std(1, ddof=1), 1e-12)
        interval = [float(v) for v in np.quantile(np.exp(mean + z * sd), [0.05, 0.95])]
        rates = [float(v) for v in np.quantile(stats.norm.sf((math.log(threshold) - mean) / sd), [0.05, 0.95])]
        method = "log-normal tail"
    return {"image": threshold, "false_alarm_rate": false_alarm_rate, "method": method, "interval": interval,
            "false_alarm_interval": rates, "observed_false_alarms": int((scores > threshold).sum()),
            "images": n, "score_median": float(np.median(scores)), "scores": scores.tolist()}


def normalized(scores, threshold: float, median: float) -> np.ndarray:
    """Scores mapped to [0, 1]: ``median`` -> 0, ``threshold`` -> 0.5, clipped."""
    spread = max(threshold - median, 1e-12)
    return np.clip(0.5 + 0.5 * (np.asarray(scores, dtype=np.float64) - threshold) / spread, 0.0, 1.0)
