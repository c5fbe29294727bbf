"""From rows to conclusions.

Pareto fronts, figures, the claims report, matched-quality speed-ups.
"""
