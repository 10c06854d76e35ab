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
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import stats

from sacd_fast.options import finite
from sacd_fast.settings import DEFAULT_FALSE_ALARM_RATE

BOOTSTRAP = 2000
# How far below the 1/(n + 1) that n scores resolve the log-normal tail may be extrapolated.
TAIL_REACH = 100


def lowest_false_alarm_rate(n: int) -> float:
    """The smallest false-alarm rate ``n`` held-out normal scores can calibrate:
    :data:`TAIL_REACH` times below the 1/(n + 1) that their order statistics resolve."""
    return 1.0 / (TAIL_REACH * (n + 1))


def check_false_alarm_rate(rate, n: int, option: str = "--false-alarm-rate") -> None:
    """ValueError naming ``option`` unless ``rate`` is a number that ``n`` normal scores can calibrate."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ValueError(f"{option} must be a number in (0, 1), got {rate!r}")
    lowest = lowest_false_alarm_rate(n)
    if rate < lowest:
        raise ValueError(f"{option} {rate:g} is below what {n} held-out normal images can calibrate: the lowest "
                         f"is {lowest:.2g} (the tail fit reaches {TAIL_REACH}x below the 1/(n+1) = "
                         f"{1 / (n + 1):.2g} that {n} scores resolve); raise the rate, or hold out more normal "
                         "images (--val-fraction)")


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
    if n < 2 or not np.isfinite(scores).all():
        raise ValueError(f"calibration needs at least 2 finite normal scores, got {n}")
    check_false_alarm_rate(false_alarm_rate, n)
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
    if not np.isfinite([threshold, *interval, *rates]).all():
        raise ValueError(f"the threshold for a false-alarm rate of {false_alarm_rate:g} from {n} normal scores is "
                         "not a finite number; raise --false-alarm-rate")
    return {"image": threshold, "false_alarm_rate": false_alarm_rate, "method": method, "interval": interval,
            "false_alarm_interval": rates, "observed_false_alarms": int((scores > threshold).sum()),
            "images": n, "score_median": float(np.median(scores)), "scores": scores.tolist()}


def normalized(scores, threshold: float, median: float) -> np.ndarray:
    """Scores mapped to [0, 1]: ``median`` -> 0, ``threshold`` -> 0.5, clipped."""
    spread = max(threshold - median, 1e-12)
    return np.clip(0.5 + 0.5 * (np.asarray(scores, dtype=np.float64) - threshold) / spread, 0.0, 1.0)


def _number(value, low=-math.inf, high=math.inf, integer: bool = False) -> bool:
    """Whether ``value`` is a finite number (an int with ``integer``) in [low, high] (an int too large for a
    float is not)."""
    return not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) \
        and finite(value) and low <= value <= high


def _pair(low: float, high: float):
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x, low, high) for x in v)


# Each field a threshold record may hold: its check, and what it must be (for the message).
THRESHOLD_FIELDS = {
    "image": (_number, "a finite number"),
    "normal_level": (_number, "a finite number"),
    "score_median": (_number, "a finite number"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "false_alarm_rate": (lambda v: _number(v, 0, 1) and 0 < v < 1, "a number in (0, 1)"),
    "false_alarm_interval": (_pair(0, 1), "two numbers in [0, 1]"),
    "interval": (_pair(-math.inf, math.inf), "two finite numbers"),
    "observed_false_alarms": (lambda v: _number(v, 0, integer=True), "an integer >= 0"),
    "images": (lambda v: _number(v, 2, integer=True), "an integer >= 2"),
    "scores": (lambda v: isinstance(v, (list, tuple)) and len(v) >= 2 and all(_number(x) for x in v),
               "a list of at least 2 finite numbers"),
}
# Written together by calibrate_threshold: one present, all needed.
CALIBRATION_FIELDS = ("false_alarm_rate", "method", "false_alarm_interval", "images", "interval",
                      "observed_false_alarms", "score_median")
GIVEN = "given by --threshold"


def _fields(record: dict) -> dict:
    """A stored threshold record's values as :class:`Thresholds` holds them (lists as tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}


@dataclass(frozen=True)
class Thresholds:
    """How a model decides, as checkpoints and exported files carry it.

    ``image`` is the threshold on the raw image score (an image is anomalous above it; the same value
    outlines the regions of its map); ``normal_level``, the median map value of normal images, is the
    bottom of the heatmap colour scale; ``score_median``, the median normal image score, maps to a
    normalised score of 0 (:func:`normalized`); ``method`` says how ``image`` was set and ``source`` on
    which images. A calibrated record also holds what :func:`calibrate_threshold` returns: the target
    ``false_alarm_rate``, its ``false_alarm_interval``, the threshold's ``interval``, the
    ``observed_false_alarms`` among the ``images`` held-out normal ``scores`` (kept so that another
    rate can be calibrated later, :meth:`recalibrated`)."""

    image: float
    normal_level: float
    score_median: float
    method: str
    source: str | None = None
    false_alarm_rate: float | None = None
    false_alarm_interval: tuple[float, float] | None = None
    interval: tuple[float, float] | None = None
    observed_false_alarms: int | None = None
    images: int | None = None
    scores: tuple[float, ...] | None = None

    def to_dict(self, scores: bool = True) -> dict:
        """The stored record (JSON values; without the held-out ``scores`` unless ``scores``)."""
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self)
                if (v := getattr(self, f.name)) is not None and (scores or f.name != "scores")}

    @classmethod
    def from_dict(cls, values, source) -> "Thresholds | None":
        """The record a checkpoint or exported file stores, checked field by field: ValueError naming
        ``source`` and the field that is missing, unknown, of the wrong type or not finite. An empty
        record (an uncalibrated export) is None."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: 'thresholds' must be a record of fields, got {type(values).__name__}")
        if not values:
            return None
        unknown = sorted(str(k) for k in values if k not in THRESHOLD_FIELDS)
        if unknown:
            raise ValueError(f"{source}: thresholds field {unknown[0]!r} is unknown")
        needed = ("image", "normal_level", "score_median", "method") + (
            CALIBRATION_FIELDS if "false_alarm_rate" in values else ())
        for name in needed:
            if name not in values:
                raise ValueError(f"{source}: thresholds field {name!r} is missing")
        for name, value in values.items():
            check, what = THRESHOLD_FIELDS[name]
            if not check(value):
                raise ValueError(f"{source}: thresholds field {name!r} must be {what}, got {str(value)[:60]!r}")
        if "scores" in values and "images" in values and len(values["scores"]) != values["images"]:
            raise ValueError(f"{source}: thresholds field 'scores' holds {len(values['scores'])} scores but "
                             f"'images' says {values['images']}")
        return cls(**_fields(values))

    @classmethod
    def calibrated(cls, scores, normal_level: float, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                   source: str | None = None) -> "Thresholds":
        """The threshold for ``false_alarm_rate`` from held-out normal image ``scores``
        (:func:`calibrate_threshold`), with the median map value ``normal_level`` of those images."""
        found = calibrate_threshold(scores, false_alarm_rate)
        return cls(normal_level=float(normal_level), source=source, **_fields(found))

    def recalibrated(self, false_alarm_rate: float) -> "Thresholds":
        """The threshold for another ``false_alarm_rate`` from the held-out scores it keeps."""
        found = calibrate_threshold(self.scores, false_alarm_rate)
        return replace(self, **_fields(found))

    @classmethod
    def given(cls, threshold: float, calibrated: "Thresholds | None" = None) -> "Thresholds":
        """A threshold set by hand (``--threshold``), keeping the colour scale of ``calibrated`` (without
        one, an uncalibrated export's, the heatmaps and normalised scores start at 0)."""
        base = calibrated or cls(image=0.0, normal_level=0.0, score_median=0.0, method=GIVEN)
        return replace(base, image=float(threshold), method=GIVEN)

    def describe(self) -> str:
        """One line: the threshold and how it was set."""
        if self.false_alarm_rate is None or self.method == GIVEN:
            return f"threshold {self.image:.4f} ({self.method})"
        low, high = self.false_alarm_interval
        return (f"threshold {self.image:.4f} for a {self.false_alarm_rate:.1%} false-alarm rate ({self.method} "
                f"on {self.images} held-out normal images; the rate it gives lies in {low:.1%}-{high:.1%} with "
                "90% confidence)")
