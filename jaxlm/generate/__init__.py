"""Text generation with a KV cache, compiled end to end with ``jax.jit``.

- :func:`generate`: greedy / temperature / top-k / top-p sampling, stop tokens, batched prompts of different
  lengths, a seed for reproducibility; prefill and the whole decode loop run in one jit.
- :func:`stream`: the same, one prompt, yielding tokens as they come (used by ``jaxlm generate``).
- :func:`beam_search`: beam search with the GNMT length penalty, for decoders and the encoder-decoder.

Works for every family with a causal decoder: ``gpt2``, ``llama`` (grouped-query KV cache) and
``transformer`` (prompts are source sentences; the encoder and the cross-attention keys/values are
computed once).
"""

from jaxlm.generate.beam import BeamOutput, beam_search
from jaxlm.generate.decode import GenerateOutput, generate, stream

__all__ = ["BeamOutput", "GenerateOutput", "beam_search", "generate", "stream"]
