"""Hugging Face ``config.json`` pieces shared by the RoPE decoder families: RoPE scaling and sliding windows.

RoPE: transformers >= 5 writes ``rope_parameters = {"rope_type", "rope_theta", "factor", ...}``; earlier
versions wrote a top-level ``rope_theta`` and ``rope_scaling = {"rope_type" (or "type"), "factor", ...}``.
:func:`rope_params` reads either; :func:`rope_fields` maps them to the Config's ``rope_*`` fields and writes
``rope_parameters`` back; :func:`check_rope` rejects a type jaxlm does not implement with one error naming
the field, its value and the supported values.

Sliding windows: ``sliding_window`` (the window W, or null) and, per layer, ``layer_types``
(``"sliding_attention"`` / ``"full_attention"``; Qwen2 derives it from ``use_sliding_window`` and
``max_window_layers`` when absent). :func:`window_fields` maps them to ``sliding_window`` and
``attn_pattern``.
"""

from __future__ import annotations

from typing import Any

from jaxlm.models import hfmap
from jaxlm.nn import positions

ROPE_KEYS = {"rope_factor": ("factor", 1.0), "rope_low_freq_factor": ("low_freq_factor", 1.0),
             "rope_high_freq_factor": ("high_freq_factor", 4.0),
             "rope_original_max_len": ("original_max_position_embeddings", 8192)}
LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def rope_params(hc: dict) -> dict:
    """The checkpoint's RoPE parameters as one dict with ``rope_type`` and ``rope_theta``."""
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": hc.get("rope_theta") or 10000.0}
    out.update(hc.get("rope_parameters") or {})
    scaling = hc.get("rope_scaling") or {}
    out.update(scaling)
    if "type" in scaling and "rope_type" not in scaling:
        out["rope_type"] = scaling["type"]
    if hc.get("rope_theta") is not None:
        out["rope_theta"] = hc["rope_theta"]
    return out


def check_rope(hc: dict) -> str | None:
    """A checkpoint's RoPE type jaxlm cannot run -> the problem (field, value, supported values)."""
    kind = rope_params(hc)["rope_type"]
    if kind in positions.ROPE_TYPES:
        return None
    where = "rope_scaling" if hc.get("rope_scaling") else "rope_parameters"
    return (f"{where}.rope_type={kind!r} (RoPE scaling of this {hc.get('model_type')} checkpoint) is not "
            f"implemented in jaxlm; supported rope_type values: {', '.join(map(repr, positions.ROPE_TYPES))}")


def _write_rope(cfg) -> dict:
    out: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        out["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        out.update({hf: getattr(cfg, ours) for ours, (hf, _) in ROPE_KEYS.items() if ours != "rope_factor"})
    return out


def rope_fields() -> tuple[hfmap.Field, ...]:
    """Fields for ``rope_theta`` and the ``rope_*`` scaling fields; export writes ``rope_parameters``."""
    def read(key, default):
        return lambda _v, hc: type(default)(rope_params(hc).get(key, default))

    return (
        hfmap.Field("rope_theta", "rope_theta", None, read=lambda _v, hc: float(rope_params(hc)["rope_theta"])),
        hfmap.Field("rope_parameters", "rope_type", None, read=lambda _v, hc: rope_params(hc)["rope_type"],
                    write=_write_rope),
        *(hfmap.Field("rope_parameters", ours, None, read=read(hf, d), export=False)
          for ours, (hf, d) in ROPE_KEYS.items()),
    )


def layer_kinds(hc: dict) -> list[str]:
    """Per layer "local"/"global" from ``layer_types`` (or Qwen2's use_sliding_window/max_window_layers, or
    every layer local when only ``sliding_window`` is set)."""
    n = hc["num_hidden_layers"]
    types = hc.get("layer_types")
    if types is None:
        sw = hc.get("sliding_window")
        if "use_sliding_window" in hc or hc.get("model_type") == "qwen2":
            first = hc.get("max_window_layers", n) if hc.get("use_sliding_window") and sw is not None else n
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
        else:
            types = ["sliding_attention" if sw is not None else "full_attention"] * n
    return [LAYER_TYPES[t] for t in types]


def check_layer_types(hc: dict) -> str | None:
    bad = sorted({t for t in hc.get("layer_types") or () if t not in LAYER_TYPES})
    if not bad:
        return None
    return (f"layer_types with {', '.join(map(repr, bad))} (attention kinds of this {hc.get('model_type')} "
            f"checkpoint) are not implemented in jaxlm; supported layer_types values: "
            f"{', '.join(map(repr, LAYER_TYPES))}")


def window(hc: dict) -> tuple[int | None, tuple[str, ...]]:
    """(sliding_window, attn_pattern) of a checkpoint. A window covering max_position_embeddings changes
    nothing and is read as None."""
    kinds = layer_kinds(hc)
    sw = hc.get("sliding_window")
    if sw is None or "local" not in kinds or sw >= hc.get("max_position_embeddings", sw + 1):
        return None, ("local",)
    return int(sw), (("local",) if all(k == "local" for k in kinds) else tuple(kinds))


def window_fields(*, layer_types: bool = True) -> tuple[hfmap.Field, ...]:
    """Fields for ``sliding_window`` and ``attn_pattern``; export writes ``layer_types`` when asked."""
    return (
        hfmap.Field("sliding_window", "sliding_window", None, read=lambda _v, hc: window(hc)[0],
                    write=lambda cfg: cfg.sliding_window if any(cfg.local_layers) else None),
        hfmap.Field("layer_types", "attn_pattern", None, read=lambda _v, hc: window(hc)[1], export=layer_types,
                    write=lambda cfg: ["sliding_attention" if x else "full_attention" for x in cfg.local_layers]),
    )
