"""Hugging Face diffusion LMs as dlmbench denoisers, loaded from local directories only.

A checkpoint spec ``hf:<local directory>`` with an options mapping (:class:`~.spec.HFOptions`)
names a Hugging Face model directory. Three adapter kinds put such a model behind the denoiser
protocol (``harness/model/protocol.py``):

* ``masked_lm``: native ``*ForMaskedLM`` models (BERT, ModernBERT), bidirectional, with a mask
  token: family ``mdlm``.
* ``remote_code``: checkpoints whose modeling code ships with the weights (LLaDA, Dream), loaded
  only with ``trust_remote_code: true``; Dream-style "logit at i predicts token i + 1" models are
  unshifted (``logits_shift``): family ``mdlm``.
* ``diffusion_gemma``: DiffusionGemma (block diffusion, uniform corruption, no mask token): a
  causal encoder cache plus a bidirectional canvas decoder: family ``uniform_block``.

Modules: :mod:`.spec` (options, directory checks; torch-free), :mod:`.config` (the model config
samplers read, from the JSON files alone; torch-free), :mod:`.adapters` (the torch modules),
:mod:`.load` (``from_pretrained`` with ``local_files_only=True``), :mod:`.tokenizer` (the model's
own ``AutoTokenizer`` for prompts and decoding) and :mod:`.cost` (the runner's FLOPs and weight
bytes for these models; torch-free). Nothing here downloads.
"""
