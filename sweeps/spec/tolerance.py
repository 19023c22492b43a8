"""The grammar of a stated objective tolerance (`objectives[i].tolerance`): a number in the metric's units or a
percentage. What a tolerance does to dominance is sweeps/driver/selection's business; this is only what the spec
accepts."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


def parse_tolerance(value: Any) -> tuple[str, float] | None:
    """A stated tolerance -> ("abs", x) for a number >= 0, ("rel", f) for "p%" (f = p / 100), None for None.

    The ValueError names neither the value nor the field: sweeps.spec (pydantic) and `tolerance_matrix` add them.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a tolerance is a number or a percentage, not a boolean")
    if isinstance(value, int | float | np.integer | np.floating):
        x = float(value)
        if not math.isfinite(x) or x < 0:
            raise ValueError("an absolute tolerance must be a finite number >= 0 in the metric's units")
        return ("abs", x)
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if not m:
            raise ValueError("a tolerance is a number >= 0 in the metric's units or a percentage like '5%'")
        pct = float(m[1])
        if pct > 100:
            raise ValueError("a relative tolerance must be at most 100%")
        return ("rel", pct / 100)
    raise ValueError(f"a tolerance is a number or a percentage like '5%', not a {type(value).__name__}")
