"""Data: :mod:`jaxlm.data.text` (datasets + tokenizers), :mod:`jaxlm.data.packing` (fixed-shape arrays,
segment ids, the deterministic seekable order) and :mod:`jaxlm.data.pipeline` (a run's train/eval arrays)."""
