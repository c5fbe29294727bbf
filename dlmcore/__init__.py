"""The small torch-free core that both ``harness`` and ``samplers`` build on.

The generic registry with did-you-mean errors, and frozen-dataclass config I/O (every problem
reported at once).
"""
