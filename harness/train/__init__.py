"""Training the shipped checkpoints: offline corpus, tokenizer, the four objectives, the loop.

``python -m harness.train CONFIG`` is ``dlmbench train CONFIG``.
"""
