"""The vocabulary of a training run's settings, kept free of heavy imports so
that the command line can offer them without loading torch."""

from typing import Literal, get_args

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEFAULT_FALSE_ALARM_RATE = 0.01  # the share of normal images the calibrated threshold may flag
