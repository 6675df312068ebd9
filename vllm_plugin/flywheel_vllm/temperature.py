"""Logits divided by the serving temperature inside the model, whatever its architecture.

vLLM's raw log-probs are taken from the logits as the model returns them, before any logits
processor; its processed ones after them all (temperature, but also healing's mask). Flywheel records
the model's own tempered, unrestricted log-probs, so the temperature goes into the model: every vLLM
model computes its logits through `LogitsProcessor`, whose `scale` multiplies them (Llama's
`logit_scale`, which Qwen2 and others never set). An out-of-tree replacement of that layer
(vLLM's `PluggableLayer.register_oot`) multiplies its scale by 1 / T; requests then ask for
temperature 1. The LoRA wrapper of the layer reads the same `scale`.
"""

from __future__ import annotations

import os

from flywheel_vllm import TEMPERATURE_ENV

_NAME = "LogitsProcessor"


def register() -> None:
    """vLLM's general-plugin hook: run in each of its processes, maybe more than once."""
    value = os.environ.get(TEMPERATURE_ENV)
    if not value:
        return
    temperature = float(value)
    if not temperature > 0:
        raise ValueError(f"{TEMPERATURE_ENV} must be a positive temperature, not {value!r}")
    from vllm.model_executor.custom_op import PluggableLayer, op_registry_oot
    from vllm.model_executor.layers.logits_processor import LogitsProcessor

    if _NAME in op_registry_oot:
        return

    @PluggableLayer.register_oot(name=_NAME)
    class TemperedLogitsProcessor(LogitsProcessor):
        flywheel_temperature = temperature

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.scale = self.scale / temperature


def active() -> float | None:
    """The temperature the model's logits are divided by in this process; None when none is."""
    from vllm.model_executor.custom_op import op_registry_oot

    layer = op_registry_oot.get(_NAME)
    return getattr(layer, "flywheel_temperature", None)
