"""Samplers of diffusion language models behind one protocol, and their schedules.

Glossary (paper notation → name used in code, YAML and dataframes):

| paper            | code            | meaning                                                   |
|------------------|-----------------|-----------------------------------------------------------|
| α_t              | ``alpha_t``     | probability that a token is still clean at time t         |
| 1 − α_t          | ``move_chance`` | probability that a token is masked at time t              |
| α0 (Eso-LM)      | ``alpha0_eval`` | expected fraction of tokens decoded by diffusion          |
| T                | ``num_steps``   | grid steps (MDLM, Eso-LM)                                 |
| L′               | ``block_size``  | BD3-LM block size                                         |
| T′               | ``steps_per_block`` | BD3-LM steps per block                                |
| σ / π            | ``order``       | Eso-LM decoding order, a permutation of 0 … L−1           |
| k_i              | ``step_sizes``  | tokens committed at denoising call i                      |
| NFE              | ``nfe_denoise`` / ``nfe_total`` | denoising calls / every network call      |

The registries are filled by the explicit imports below.
"""

from samplers.base import SAMPLERS, Sampler, SamplerError, SampleResult

# Eso-LM (B), its interleaved variant, BD3-LM (the explicit imports register them).
from samplers import bd3lm_block, esolm, esolm_interleaved  # noqa: F401, E402  isort: skip

__all__ = ["SAMPLERS", "SampleResult", "Sampler", "SamplerError"]
