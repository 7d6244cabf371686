"""Model loading: the offline stand-in round-trips through a plain safetensors folder."""
from __future__ import annotations

import torch


def test_smollm2_saves_as_plain_safetensors(tmp_path, smollm2):
    """transformers keeps the GGUF quantizer attached to a dequantized model and then refuses
    to save it; a checkpoint of the stand-in must save and reload with the same outputs."""
    from transformers import AutoModelForCausalLM

    from gpt2ft.model import save_model

    tok, model = smollm2
    save_model(model, tok, tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", use_safetensors=True).eval()
    x = torch.tensor([tok("Lilliput", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, again(x).logits, atol=1e-5)
