"""The denoiser: the DiT with its exact cached call paths, checkpoint I/O, checkpoint specs.

Samplers never import this package; they call a model through the denoiser protocol
(``harness/model/protocol.py``), which the DiT implements.
"""
