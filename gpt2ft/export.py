"""Saving models, and exporting the study's selected trial as a self-contained folder.

The folder holds safetensors weights, the tokenizer, the resolved config, ``metrics.json`` and
a model card, and loads with ``transformers.pipeline("text-generation", model=DIR)`` alone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from gpt2ft.errors import UserError
from gpt2ft.fsutil import atomic_dir, write_json_atomic


def save_model(model, tokenizer, path: str | Path) -> Path:
    """Weights (safetensors) and tokenizer into ``path``, written aside and moved into place."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(info: dict[str, Any], retrained: bool) -> str:
    m, refs = info["metrics"], info["references"]
    keys = ("top100_ratio", "memorization", "memorization_4", "memorization_16", "longest_copy",
            "style_js", "style_prob", "extractable_rate", "heldout_loss", "train_loss")
    rows = "\n".join(f"| {k} | {_fmt(m.get(k, math.nan))} | {_fmt(refs.get('book_' + k, math.nan))} | "
                     f"{_fmt(refs.get('base_' + k, math.nan))} |" for k in keys)
    samples = "\n\n".join(f"> {t}" for t in info.get("texts", [])[:3])
    origin = ("Retrained from the trial's hyperparameters and seed (its checkpoint was not kept); "
              "sample metrics below are those measured during the study." if retrained else
              "Weights saved at the end of the trial.")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2ft, gulliver]
---
# gpt2ft: study `{info['study_name']}`, trial {info['number']}

Fine-tuned on Gulliver's Travels by gpt2ft. Selected by the balanced pick: {info['reason']}.
{origin}

Hyperparameters: {', '.join(f'{k}={_fmt(v)}' for k, v in info['params'].items())}.

| metric | this model | held-out book (human) | base model |
|---|---|---|---|
{rows}

```python
from transformers import pipeline
generate = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(generate("I", do_sample=True, max_new_tokens=100)[0]["generated_text"])
```

## Samples

{samples}
"""


def export_cli(args) -> int:
    from gpt2ft.study import load_selected
    from gpt2ft.tracking import resolve_uri

    tracking_uri = resolve_uri(args.tracking_uri)
    info = load_selected(args.storage, args.study_name, tracking_uri)
    out = Path(args.out)
    retrained = not (info["checkpoint"] and Path(info["checkpoint"]).is_dir())
    with atomic_dir(out) as tmp:
        if retrained:
            print(f"gpt2ft: the checkpoint of trial {info['number']} was not kept; retraining it from its "
                  "parameters and seed.", file=sys.stderr)
            _retrain(info, tmp, args)
        else:
            for item in Path(info["checkpoint"]).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        (tmp / "config.gpt2ft.yaml").write_text(info["config_yaml"] or "", encoding="utf-8")
        write_json_atomic({"study": info["study_name"], "trial": info["number"], "params": info["params"],
                           "metrics": info["metrics"], "references": info["references"],
                           "retrained": retrained, "mlflow_run_id": info["mlflow_run_id"]},
                          tmp / "metrics.json")
        (tmp / "README.md").write_text(model_card(info, retrained), encoding="utf-8")
        _check_loads(tmp)
    print(f"exported trial {info['number']} of study {info['study_name']!r} to {out}")
    if not args.no_register:
        from gpt2ft.tracking import log_pipeline_model

        name = f"gpt2ft-{info['study_name']}"
        version = log_pipeline_model(tracking_uri, info["mlflow_run_id"], out, name)
        print(f"logged as MLflow model {name} version {version}, alias 'champion'")
    return 0


def _check_loads(folder: Path) -> None:
    """The promise of the folder: plain transformers loads it and it generates."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(folder))
    pipe("The", max_new_tokens=5, do_sample=False)


def _retrain(info: dict[str, Any], folder: Path, args) -> None:
    import yaml

    from gpt2ft.config import Config, _build
    from gpt2ft.measure import prepare
    from gpt2ft.model import seed_everything
    from gpt2ft.train import fit

    if not info["config_yaml"]:
        raise UserError("the study does not record its config, so the trial cannot be retrained.")
    config: Config = _build(Config, yaml.safe_load(info["config_yaml"]))
    p = info["params"]
    tcfg = dataclasses.replace(config.train, lr=p["lr"], epochs=p["epochs"], batch_size=p["batch_size"])
    assets = prepare(config, args.corpus or info["corpus"], classifier=False)
    seed_everything(tcfg.seed)
    model = assets.fresh_model()
    fit(tcfg, model, assets.data, None, assets.runtime, progress=not args.quiet)
    model.to("cpu").save_pretrained(folder)
    assets.tokenizer.save_pretrained(folder)
    (folder / "retrained.json").write_text(json.dumps({"params": p, "seed": tcfg.seed}), encoding="utf-8")
