"""Interoperability with other JAX libraries: :mod:`jaxlm.interop.flax` (Flax NNX modules)."""
