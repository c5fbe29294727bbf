"""Stand-in plugin modules for the entry-point tests (loaded through fake entry points)."""

from __future__ import annotations

import torch

from samplers.schedules import binomial_counts


class SquareSchedule:
    """α_t = 1 − t², a well-formed third-party schedule."""

    name = "square_plugin"

    def alpha(self, t):
        return 1.0 - torch.as_tensor(t, dtype=torch.float64) ** 2

    def counts(self, n_tokens, num_steps, generator, alpha0=1.0):
        return binomial_counts(self, n_tokens, num_steps, generator, alpha0)


class NoCounts:
    """Lacks ``counts``: must be refused."""

    name = "no_counts"

    def alpha(self, t):
        return 1.0 - t
