"""Training the shipped checkpoints: offline corpus, tokenizer, the four objectives, the loop.

Prompt-conditioned training on the task suite: ``taskdata`` (row layout, held-out split, the
task/corpus mixture) and ``taskeval`` (greedy one-token-per-call decoding, exact-match accuracy);
``docs/training-tasks.md``.

``python -m harness.train CONFIG`` is ``dlmbench train CONFIG``.
"""
