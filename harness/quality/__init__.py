"""Quality of generated samples.

Metrics (Gen PPL protocols, entropy, MAUVE), evaluators, and the scoring stage that reads a run's
saved samples.
"""
