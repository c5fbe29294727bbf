"""Samplers of diffusion language models behind one protocol, and their schedules.

Glossary (paper notation → name used in code, YAML and dataframes):

| paper            | code            | meaning                                                   |
|------------------|-----------------|-----------------------------------------------------------|
| α_t              | ``alpha_t``     | probability that a token is still clean at time t         |
| 1 − α_t          | ``move_chance`` | probability that a token is masked at time t              |
| α0 (Eso-LM)      | ``alpha0_eval`` | expected fraction of tokens decoded by diffusion          |
| T                | ``num_steps``   | grid steps (MDLM, Eso-LM)                                 |
| L′               | ``block_size``  | BD3-LM block size                                         |
| B (LLaDA)        | ``block_length`` | semi-autoregressive block of ``mdlm_blocks``             |
| T′               | ``steps_per_block`` | steps per block (BD3-LM, ``mdlm_blocks``)             |
| P                | ``prompt_len``  | prompt tokens fixed at positions [0, P) of the canvas     |
| σ / π            | ``order``       | Eso-LM decoding order, a permutation of 0 … L−1           |
| k_i              | ``step_sizes``  | tokens committed at denoising call i                      |
| τ (Fast-dLLM)    | ``policy_threshold`` | confidence threshold of the ``threshold`` policy     |
| NFE              | ``nfe_denoise`` / ``nfe_total`` | denoising calls / every network call      |

Every sampler takes ``prompt=`` ((b, P) int64 or ``None``) in ``plan`` and ``sample``; the
contract is in ``samplers/base.py``.

The registries are filled by the explicit imports below; installed plugins (entry-point groups
``dlmbench.schedules``, ``dlmbench.policies``) are registered last.
"""

# Importing a sampler module registers it. MDLM family and AR:
from samplers import ar, mdlm_ancestral, mdlm_first_hitting, mdlm_semiar  # noqa: F401
from samplers.base import SAMPLERS, Sampler, SamplerError, SampleResult
from samplers.schedules import POLICIES, SCHEDULES, load_entry_points

# Eso-LM (B), its interleaved variant, BD3-LM:
from samplers import bd3lm_block, esolm, esolm_interleaved  # noqa: F401, E402  isort: skip

# diffusers' dLLM schedulers in dlmbench's loop (diffusers imported only when one runs):
from samplers import diffusers_blocks  # noqa: F401, E402  isort: skip
from samplers import diffusers_pipeline  # noqa: F401, E402  isort: skip

load_entry_points()

__all__ = ["POLICIES", "SAMPLERS", "SCHEDULES", "SampleResult", "Sampler", "SamplerError"]
