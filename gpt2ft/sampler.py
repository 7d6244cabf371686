"""The weights a measurement decodes with: the trained model's own, or one persistent copy of
them in a lower precision (``sample.precision``).

A measurement is mostly decoding (100 sampling steps at 10 rows; docs/measure_speed.md) and a
decoding step reads every weight once. Where the hardware multiplies
bf16 natively (CUDA; a CPU with AVX512-BF16 or AMX) a bf16 copy decodes in about two thirds of the
time: on this project's 2-core CPU, SmolLM2's 10 x 100 samples took 6.0 s in bf16 against 8.9 s in
fp32. The copy is made once per process and each measurement copies the trained weights into it
in place (``load_state_dict`` casts), so training never sees it and its fp32 weights stay exact,
and on CUDA a compiled decode over the copy would not recompile per trial. On such a CPU the
copy's linear layers also multiply a step's few rows on weights prepacked for oneDNN once per
measurement (``pack``): the same products, bit for bit, 14% less sampling time.

bf16 draws are not fp32's: the logits differ in their last bits and a sampled sequence soon
takes another path. Every model of a study (the base model's references, each trial, the
re-measured contenders) is measured at the one resolved precision, recorded with the setup, so
their numbers compare; a study's numbers move when the precision does.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

from gpt2ft import lora
from gpt2ft.config import SAMPLE_PRECISIONS as PRECISIONS


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware; emulated bf16 decodes slower than fp32.

    CUDA: compute capability 8.0 or more (Ampere on; ROCm always). ``torch.cuda.is_bf16_supported()``
    alone also counts a T4's or V100's emulation, so emulation is excluded by name. CPU: AVX512-BF16
    or AMX-BF16 (``torch.cpu.get_capabilities``, else the kernel's CPU flags); oneDNN's own bf16 check
    also passes plain AVX512, which converts to fp32 for every product."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        native = any(k in _cpu_features() for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
        return bool(native and torch.backends.mkldnn.is_available())
    return False


_CPUINFO = "/proc/cpuinfo"


def _cpu_features() -> set[str]:
    """The CPU's feature names. ``torch.cpu.get_capabilities`` is newer than the GPU machine's
    torch 2.11, where Linux's ``/proc/cpuinfo`` flags (the same names) answer instead."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return {k for k, v in get().items() if v}
    try:
        with open(_CPUINFO) as f:
            return {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:  # not Linux: no bf16 copy, fp32 decodes as before
        return set()


def sampling_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The dtype a measurement decodes in, or None for the model's own (fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"sample.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and bf16_is_native(device)):
        return torch.bfloat16
    return None


def resolved_precision(precision: str, device: torch.device) -> str:
    """``sample.precision`` as this device resolves it (bf16 or fp32): the setup cache's key and
    the runs' ``sample_precision`` tag, since the base model's references depend on it."""
    return "bf16" if sampling_dtype(precision, device) is torch.bfloat16 else "fp32"


#: Rows (tokens in one call) up to which the sampling copy multiplies with prepacked weights: a
#: decoding step's 10 or 20 rows, not the 1,000 of a teacher-forced or judged pass. From 1 to 64
#: rows the packed products equalled ``F.linear``'s bit for bit for every SmolLM2 and GPT-2 shape
#: on this project's CPU; at 96 rows one shape differed, at 500 and more several, in the last bit.
PACKED_MAX_ROWS = 64
#: The row count oneDNN lays the packed weights out for: a decoding step's 10 to 20.
PACK_FOR_ROWS = 16


def packs_on(device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    """Whether the sampling copy's products run on weights prepacked for oneDNN: bf16 on a CPU that
    multiplies bf16 natively. A decoding step multiplies 10 rows by every weight, and on this
    project's CPU ``F.linear`` re-lays each bf16 weight out on every call; packed once per
    measurement, SmolLM2's 10 x 100 samples took 4.4 s instead of 5.1 s, the same tokens. The packed
    weights are a second bf16 copy in memory (about 2 bytes a parameter); never made on CUDA."""
    return (device.type == "cpu" and dtype is torch.bfloat16 and bf16_is_native(device)
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
    """A linear layer's forward on its prepacked weight for a few rows, its own forward otherwise."""
    if x.dtype == torch.bfloat16 and x.numel() <= PACKED_MAX_ROWS * x.shape[-1]:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight, self.bias, "none", [], "")
    return type(self).forward(self, x)


def _linears(model) -> list[tuple[torch.nn.Module, bool]]:
    """Every linear layer of ``model``: ``nn.Linear`` (weight out x in) and transformers' ``Conv1D``
    (GPT-2's, weight in x out), with whether its weight is stored transposed."""
    from transformers.pytorch_utils import Conv1D

    return [(m, isinstance(m, Conv1D)) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


@torch.no_grad()
def pack(model) -> None:
    """(Re)pack every linear layer's weight of ``model`` for few-row products and route its forward
    there (an instance attribute, so the state dict and tied weights stay as they are)."""
    for module, transposed in _linears(model):
        weight = module.weight.detach()
        weight = (weight.t() if transposed else weight).contiguous()
        module._packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_ROWS)
        module.forward = _packed_forward.__get__(module)


class Sampler:
    """Hands a measurement the model to decode with: ``model`` itself when no lower precision is
    asked for, else the persistent copy holding ``model``'s weights (prepacked with ``packed``). A
    LoRA trial's model (``gpt2ft.lora``) is always decoded from the copy, with its adapters merged:
    the plain weights its export holds, in the sampling precision or fp32."""

    def __init__(self, dtype: Optional[torch.dtype], packed: bool = False):
        self.dtype, self.packed = dtype, packed
        self._copy = None
        self._shapes: dict[str, tuple] = {}

    @torch.no_grad()
    def weights_of(self, model):
        adapted = lora.is_adapted(model)
        if not adapted and (self.dtype is None or next(model.parameters()).dtype == self.dtype):
            return model
        state = lora.merged_state(model)
        shapes = {k: (type(lora.base_of(model)).__name__, tuple(v.shape)) for k, v in state.items()}
        if self._copy is None or shapes != self._shapes:
            # Another architecture (tests build several): a new copy. Otherwise in place.
            self._copy = lora.merged(copy.deepcopy(model)).eval()
            if self.dtype is not None:
                self._copy.to(self.dtype)
            # Gradients the deepcopy brought along are dropped; requires_grad is left on (decoding
            # runs under no_grad or inference mode anyway): with it off, a 16-row greedy decode ran
            # in 2.7 s instead of 1.6 s on this CPU (bf16, torch 2.13), a slower matmul path.
            for p in self._copy.parameters():
                p.grad = None
            self._shapes = shapes
        else:
            self._copy.load_state_dict(state)
        if self.packed:
            pack(self._copy)  # the packed weights are copies: made again from the new weights
        return self._copy
