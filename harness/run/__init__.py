"""Running experiments.

Config and cells, timing, the runner (one cell timed), the one-cell process, the executors that
place cells, and the sweep that chooses the executor. Import direction (no cycles): ``sweep`` →
``executors`` → ``cellrun`` → ``runner`` → ``timing`` / ``experiment``.
"""
