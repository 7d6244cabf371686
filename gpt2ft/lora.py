"""LoRA through ``peft``, and only here: the adapters a trial trains (``train.method: lora``), the
one plain model every reader after training sees (the adapters merged), and a checkpoint's adapter
put back on the base model.

A LoRA trial trains a ``peft.PeftModel`` around its fresh copy of the base model: the base weights
frozen, each adapted layer computing ``W x + s B A x`` with ``s = lora_alpha / lora_r``. Everything
after training reads one plain model of the base architecture whose weights are ``W + s B A``, as
``merge_and_unload`` makes them: the sampling copy (``gpt2ft.sampler``), so the judges measure the
weights the export writes; a checkpoint reloaded for a re-measure; the export, which then loads in
``transformers.pipeline`` with nothing of ours and no peft. :func:`merged_state` adds the same
``get_delta_weight`` to the same weights as peft's merge does, so both are the same bits.

A checkpoint of a LoRA point keeps the adapter alone (a PeftModel's ``save_pretrained``), a few MB
against the model's hundreds. ``peft`` is imported on first use only (1.6 s here): a study that
trains every weight never loads it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from gpt2ft.config import TrainConfig
from gpt2ft.errors import UserError

#: What a PeftModel's ``save_pretrained`` writes beside the adapter's weights.
ADAPTER_CONFIG = "adapter_config.json"


def adapt(model, cfg: TrainConfig):
    """``model`` itself for full fine-tuning; under ``train.method: lora``, ``model`` wrapped in
    rank-``cfg.lora_r`` adapters. Their A matrices are drawn from torch's generator, so a trial and
    its retrain, seeded alike before this call, start from the same adapters."""
    if cfg.method != "lora":
        return model
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = list(cfg.lora_target_modules) if cfg.lora_target_modules else "all-linear"
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM",
                        # GPT-2's Conv1D stores its weight in x out: peft must know, or it warns and guesses.
                        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()))
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"train.lora_target_modules {targets} do not name layers of {type(model).__name__} "
                        f"({str(exc).splitlines()[0][:200]}); list its linear layers or leave it null.") from None


def is_adapted(model) -> bool:
    """Whether ``model`` is a PeftModel (no model is one while peft was never imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_of(model):
    """The model of the base architecture inside ``model`` (``model`` itself when not adapted)."""
    return model.get_base_model() if is_adapted(model) else model


def trainable(model) -> int:
    """Parameters the optimizer updates: every one in full fine-tuning, the adapters' under LoRA."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merged_state(model) -> dict[str, torch.Tensor]:
    """The plain model's state dict: an adapted model's with every adapted weight ``W + s B A``
    (peft's own ``get_delta_weight`` added to the frozen ``W``, the addition ``merge_and_unload``
    makes), the adapters' own tensors left out; a plain model's own state dict."""
    if not is_adapted(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {key.replace(".base_layer.", "."): v for key, v in base.state_dict().items() if ".lora_" not in key}
    for name, layer in base.named_modules():
        if isinstance(layer, LoraLayer):
            weight = layer.get_base_layer().weight
            for adapter in layer.active_adapters:
                weight = weight + layer.get_delta_weight(adapter)
            state[f"{name}.weight"] = weight
    return state


def merged(model):
    """A plain model with the adapters merged in place (``merge_and_unload``; ``model`` itself when
    not adapted). Every weight left trainable, as a plain model's are."""
    if not is_adapted(model):
        return model
    plain = model.merge_and_unload()
    for p in plain.parameters():
        p.requires_grad_(True)
    return plain


def is_adapter_folder(path: str | Path) -> bool:
    """Whether a checkpoint folder holds an adapter (a LoRA point's) rather than whole weights."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_merged(base, path: str | Path):
    """The checkpoint's adapter at ``path`` put on ``base`` (a fresh copy of the base model) and
    merged: the plain model the trial measured at that point."""
    from peft import PeftModel

    return merged(PeftModel.from_pretrained(base, str(path)))
