"""What the Hugging Face parity tests share: random-init transformers models perturbed so that no parameter keeps
its default (a wrong name map or a missing ``(1 + w)`` cannot pass), and their float32 logits as numpy."""

from __future__ import annotations

import numpy as np


def randomize(model, seed: int = 0, std: float = 0.2):
    """Add N(0, std²) noise to every parameter of a torch ``model`` (norm scales and biases too); eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def torch_logits(model, tokens, **kw) -> np.ndarray:
    """``model(tokens).logits`` as numpy ``[B, T, V]``, without gradients; ``kw`` go to the model's forward."""
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long), **kw).logits.numpy()
