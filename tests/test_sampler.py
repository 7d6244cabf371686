"""The weights a measurement decodes with (gpt2ft.sampler): one persistent copy per process in
the sampling precision, refreshed in place from the trained weights, never touching them."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2ft.sampler import Sampler, packs_on, sampling_dtype


def _tiny(seed: int, n_embd: int = 16) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_layer=1, n_embd=n_embd, n_head=2))


def test_precision_resolves_per_device(monkeypatch):
    import gpt2ft.sampler as S

    cpu = torch.device("cpu")
    assert sampling_dtype("fp32", cpu) is None
    assert sampling_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(S, "bf16_is_native", lambda device: False)
    assert sampling_dtype("auto", cpu) is None
    monkeypatch.setattr(S, "bf16_is_native", lambda device: True)
    assert sampling_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="sample.precision"):
        sampling_dtype("fp8", cpu)


def test_fp32_decodes_with_the_model_itself():
    model = _tiny(0)
    assert Sampler(None).weights_of(model) is model


def test_one_copy_refreshed_in_place_and_the_trained_weights_untouched():
    model = _tiny(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = Sampler(torch.bfloat16)
    first = sampler.weights_of(model)
    assert first is not model and not first.training
    for k, v in first.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, before[k].to(torch.bfloat16)), k
    # A training step moves the weights: the same copy now holds the new ones.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    second = sampler.weights_of(model)
    assert second is first
    for k, v in second.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16)), k
    # The trained model stays fp32 and trainable; the tied embedding stays tied in the copy.
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert second.lm_head.weight.data_ptr() == second.transformer.wte.weight.data_ptr()
    # Another architecture gets a copy of its own.
    other = sampler.weights_of(_tiny(1, n_embd=32))
    assert other is not first and other.transformer.wte.weight.shape[1] == 32


def test_bf16_samples_are_the_method_s_samples():
    """bf16 decoding keeps the method's contract: n sequences of exactly new_tokens, EOS banned,
    reproducible for a seed."""
    from gpt2ft.generate import sample
    from gpt2ft.model import Runtime

    class Tok:
        eos_token_id = 63
        bos_token_id = 63

    model = _tiny(0)
    copy = Sampler(torch.bfloat16).weights_of(model)
    runtime = Runtime(torch.device("cpu"), None)
    a = sample(copy, Tok(), runtime, 3, 12, seed=5)
    assert a == sample(copy, Tok(), runtime, 3, 12, seed=5)
    assert [len(s) for s in a] == [12] * 3 and all(63 not in s for s in a)


def test_the_fluency_judge_is_the_base_model_in_the_sampling_precision():
    """Assets.fluency_judge: the base model's weights at the sampler's dtype, made once; fp32
    keeps the base model itself."""
    from types import SimpleNamespace

    from gpt2ft.assets import Assets

    base = _tiny(3)
    judge = Assets.fluency_judge.func(SimpleNamespace(sampler=Sampler(torch.bfloat16), base_model=base))
    assert judge is not base
    for k, v in judge.state_dict().items():
        assert torch.equal(v, base.state_dict()[k].to(torch.bfloat16)), k
    assert Assets.fluency_judge.func(SimpleNamespace(sampler=Sampler(None), base_model=base)) is base


def test_a_measurement_decodes_the_persistent_copy_as_configured(monkeypatch):
    """measure_model samples with the sampler's copy (the same object every measurement, so a
    compiled decode is kept across trials, in inference mode), passes ``sample.decode`` on, and
    runs the teacher-forced extraction on the model itself, outside inference mode."""
    from types import SimpleNamespace

    import gpt2ft.measure as M
    from conftest import TINY
    from gpt2ft.config import load_config

    seen = []
    modes = []
    monkeypatch.setattr(M, "sample", lambda model, *a, decode="dynamic", **k: seen.append((model, decode))
                        or modes.append(torch.is_inference_mode_enabled()) or [[1]])
    monkeypatch.setattr(M, "renormalise", lambda tok, raw: (raw, ["x"]))
    monkeypatch.setattr(M, "measure_samples", lambda *a, **k: {})
    monkeypatch.setattr(M, "extraction", lambda assets, model: seen.append((model, "extraction"))
                        or modes.append(torch.is_inference_mode_enabled()) or {})
    config = load_config(TINY, ["sample.decode=static"])
    assets = SimpleNamespace(config=config, tokenizer=None, runtime=None, sampler=Sampler(torch.bfloat16))
    first, second = _tiny(0), _tiny(1)
    M.measure_model(assets, first, 2, seed=0)
    M.measure_model(assets, second, 2, seed=0)
    copy = seen[0][0]
    assert [d for _, d in seen] == ["static", "extraction"] * 2
    assert seen[2][0] is copy and copy is not first and [m for m, _ in seen[1::2]] == [first, second]
    assert torch.equal(copy.lm_head.weight, second.lm_head.weight.to(torch.bfloat16))
    assert modes == [True, False, True, False]
    # The copy decodes in inference mode; the training model itself (fp32) only under no_grad,
    # so none of its tensors becomes an inference tensor that a later backward pass would refuse.
    assets.sampler = Sampler(None)
    M.measure_model(assets, first, 2, seed=0)
    assert modes[4:] == [False, False] and seen[-2][0] is first


needs_packing = pytest.mark.skipif(not packs_on(torch.device("cpu"), torch.bfloat16),
                                   reason="this CPU does not multiply bf16 natively: no packed weights")


@needs_packing
def test_packed_weights_draw_the_same_tokens_and_follow_each_refresh():
    """The packed copy (GPT-2: Conv1D layers and an nn.Linear head tied to the embedding) samples
    the tokens the plain bf16 copy samples, for one model and then, refreshed, for another; a pass
    over many rows takes the layers' own forward, bit for bit."""
    from types import SimpleNamespace

    from gpt2ft.generate import sample
    from gpt2ft.model import Runtime

    rt, tok = Runtime(torch.device("cpu"), None), SimpleNamespace(bos_token_id=63, eos_token_id=63)
    packed, plain = Sampler(torch.bfloat16, packed=True), Sampler(torch.bfloat16)
    for seed in (0, 1):
        model = _tiny(seed, n_embd=64)
        p, q = packed.weights_of(model), plain.weights_of(model)
        assert p is not q and hasattr(p.transformer.h[0].attn.c_attn, "_packed_weight")
        with torch.inference_mode():
            assert sample(p, tok, rt, 10, 20, seed=3) == sample(q, tok, rt, 10, 20, seed=3)
            many = torch.randint(0, 63, (4, 30))
            assert torch.equal(p(many).logits, q(many).logits)
    assert p.lm_head.weight is p.transformer.wte.weight  # still tied


def _gpu(monkeypatch, major: int) -> None:
    """torch sees one CUDA GPU of compute capability ``major``.x that can build bf16 tensors (a
    T4 or V100 emulates bf16 in fp32: ``torch.cuda.is_bf16_supported()`` says True there)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_bf16_on_cuda_is_native_from_ampere_on_not_emulated(monkeypatch, major, native):
    from gpt2ft.config import TrainConfig
    from gpt2ft.model import resolve_runtime
    from gpt2ft.sampler import bf16_is_native

    _gpu(monkeypatch, major)
    assert torch.cuda.is_bf16_supported()  # torch's own answer counts the emulation
    cuda = torch.device("cuda")
    assert bf16_is_native(cuda) is native
    assert sampling_dtype("auto", cuda) is (torch.bfloat16 if native else None)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # training's autocast follows the same rule
        runtime = resolve_runtime(TrainConfig(device="auto", precision="auto"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert runtime.precision == ("bf16-autocast" if native else "fp32")


@pytest.mark.parametrize("caps, native", [({"avx512_bw": True, "avx512_bf16": False, "amx_bf16": False}, False),
                                          ({"avx512_bw": True, "avx512_bf16": True}, True),
                                          ({"avx512_bw": True, "amx_bf16": True}, True)])
def test_bf16_on_a_cpu_is_native_with_its_bf16_instructions_only(monkeypatch, caps, native):
    from gpt2ft.sampler import bf16_is_native

    # oneDNN's own check passes any AVX512 CPU, which converts bf16 to fp32 for every product
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    cpu = torch.device("cpu")
    assert bf16_is_native(cpu) is native
    assert sampling_dtype("auto", cpu) is (torch.bfloat16 if native else None)
    assert packs_on(cpu, torch.bfloat16) is (native and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@pytest.mark.parametrize("flags, native", [("fpu avx512_bw avx512f", False), ("fpu avx512_bw avx512_bf16", True),
                                           ("fpu amx_tile amx_bf16", True)])
def test_bf16_on_a_torch_without_get_capabilities_reads_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    # the GPU machine's torch 2.11 has no torch.cpu.get_capabilities: a --cpu-check there must not fail
    from gpt2ft import sampler as S

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(S, "_CPUINFO", str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert S.bf16_is_native(torch.device("cpu")) is native
    monkeypatch.setattr(S, "_CPUINFO", str(tmp_path / "absent"))
    assert S.bf16_is_native(torch.device("cpu")) is False
