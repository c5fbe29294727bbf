"""PLACEHOLDER energy meter with the agreed interface; the energy helper writes the real one.

It always reports ``energy_method = "none"`` and NaN energy (never 0, measurement.md §8).
"""

from __future__ import annotations

import math


class EnergyMeter:
    """Energy over a synchronised window (placeholder: no counter, NaN)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def start(self) -> None:
        """Open the window (placeholder: nothing to read)."""

    def stop(self) -> dict:
        """Close the window: ``energy_j``, ``energy_method``, ``power_w_mean``."""
        return {"energy_j": math.nan, "energy_method": "none", "power_w_mean": math.nan}
