"""Is a slice big enough to tell checkpoints apart?

An accuracy measured on n items has a 95% interval of about
``p ± 1.96·sqrt(p(1-p)/n)``; it is widest at p = 0.5, so that is the honest
figure to plan with. Two checkpoints whose accuracies differ by less than about
that half-width cannot be told apart on the slice (paired tests do a little
better, but not by an order of magnitude).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

Z95 = 1.96
DEFAULT_MAX_HALF_WIDTH = 0.10


def half_width(n: int, p: float = 0.5, z: float = Z95) -> float:
    """95% interval half-width of an accuracy near ``p`` measured on ``n`` items
    (infinite for an empty slice)."""
    if n <= 0:
        return math.inf
    return z * math.sqrt(p * (1 - p) / n)


def items_needed(target_half_width: float, p: float = 0.5, z: float = Z95) -> int:
    """Smallest n whose half-width is at most ``target_half_width``."""
    return math.ceil((z * z) * p * (1 - p) / (target_half_width ** 2))


def slice_power(sizes: Mapping[str, int], max_half_width: float = DEFAULT_MAX_HALF_WIDTH) -> dict[str, Any]:
    """Per slice: size, half-width at p=0.5, whether it is too wide, and the size
    that would be enough. ``warnings`` holds one line per slice that is too small."""
    per_slice: dict[str, Any] = {}
    warnings: list[str] = []
    need = items_needed(max_half_width)
    for name, n in sizes.items():
        hw = half_width(int(n))
        too_wide = hw > max_half_width
        per_slice[name] = {"size": int(n), "half_width": None if math.isinf(hw) else round(hw, 4),
                           "too_wide": too_wide, "items_for_target": need}
        if too_wide:
            shown = "∞" if math.isinf(hw) else f"±{hw:.3f}"
            warnings.append(
                f"slice {name!r} has {n} items: an accuracy near 0.5 is only known to {shown} "
                f"(95%), wider than ±{max_half_width:.2f}; checkpoints closer than that cannot be "
                f"told apart on it (about {need} items are needed)")
    return {"max_half_width": max_half_width, "slices": per_slice, "warnings": warnings}
