"""dlmbench harness: the denoiser, checkpoints, runner, timing, metrics, plots and CLI."""

__version__ = "0.1.0"
