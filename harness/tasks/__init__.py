"""Prompted tasks scored by exact match, and accuracy under parallelism (issue 13).

``suite`` — the built-in offline tasks (generated from a seed) and the ``TASKS`` registry;
``files`` — user tasks from a JSONL file; ``lmeval`` — lm-evaluation-harness tasks as dlmbench
examples (optional extra ``dlmbench[tasks]``); ``scoring`` — answer extraction, named
normalisations, exact match and the bootstrap CI of accuracy; ``aup`` — d3LLM's Accuracy Under
Parallelism. Everything here is torch-free. Design and formulas: ``docs/tasks.md``.
"""
