"""Exporting the study's selected candidate (a trial at one step) as a self-contained folder.

The folder holds safetensors weights, the tokenizer, the resolved config, ``metrics.json`` and
a model card, and loads with ``transformers.pipeline("text-generation", model=DIR)`` alone.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from transformers import pipeline

from gpt2ft.assets import prepare
from gpt2ft.config import Config, build_config
from gpt2ft.coordination import default_storage, load_study
from gpt2ft.errors import UserError
from gpt2ft.fsutil import atomic_dir, write_json_atomic
from gpt2ft.model import seed_everything
from gpt2ft.fmt import fmt
from gpt2ft.checkpoints import Checkpoints
from gpt2ft.summary import summarize
from gpt2ft.tracking import resolve_uri, store_folder
from gpt2ft.trial_writes import log_model
from gpt2ft.train import fit
from gpt2ft.trial import candidate_train_config


def model_card(info: dict[str, Any], retrained: bool) -> str:
    m, refs = info["metrics"], info["references"]
    keys = ("top100_ratio", "memorization", "memorization_4", "memorization_16", "longest_copy",
            "style_js", "style_prob", "extractable_rate", "heldout_loss", "train_loss")
    rows = "\n".join(f"| {k} | {fmt(m.get(k, math.nan))} | {fmt(refs.get('book_' + k, math.nan))} | "
                     f"{fmt(refs.get('base_' + k, math.nan))} |" for k in keys)
    samples = "\n\n".join(f"> {t}" for t in info.get("texts", [])[:3])
    origin = (f"Retrained from the trial's hyperparameters and seed to step {info['step']} (its checkpoint was not "
              "kept); sample metrics below are those measured during the study." if retrained else
              f"Weights saved at step {info['step']} of the trial.")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2ft, gulliver]
---
# gpt2ft: study `{info['study_name']}`, trial {info['number']} at step {info['step']}

Fine-tuned on Gulliver's Travels by gpt2ft. {info['reason']}.
{origin}

Hyperparameters: {', '.join(f'{k}={fmt(v)}' for k, v in info['params'].items())}.

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


def load_selected(storage_url: Optional[str], study_name: Optional[str], tracking_uri: str,
                  trial: Optional[int] = None, step: Optional[int] = None) -> dict[str, Any]:
    """What export needs about a candidate -- the selected one, or trial ``trial`` at ``step`` (its
    end by default) when named: params, metrics, config, checkpoint. Refuses, in one sentence, when
    nothing is eligible and no candidate is named."""
    study = load_study(storage_url or default_storage(store_folder(tracking_uri)), study_name)
    summary = summarize(study)
    if summary.pick is None:
        raise UserError(f"study {study.study_name!r} has no completed trial yet; run `gpt2ft study` until "
                        "one completes, then export.")
    key = _named(summary, trial, step) if trial is not None else summary.selected
    if key is None:
        raise UserError(f"study {study.study_name!r} has no eligible candidate ({summary.pick.reason}); name one "
                        "with --trial N [--step S] to export it anyway.")
    row = summary.candidate(*key)
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == key[0])
    root = study.user_attrs.get("checkpoint_root")
    reason = (f"Selected by the balanced pick: {summary.pick.reason}" if key == summary.selected else
              f"Named by the user (not the pick: {row.get('why_not') or 'eligible, not the best'})")
    return {"study_name": study.study_name, "number": key[0], "step": key[1], "params": frozen.params,
            "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "checkpoint": str(Checkpoints(root).path(*key)) if root else None,
            "mlflow_run_id": frozen.user_attrs.get("mlflow_run_id"), "references": summary.references,
            "config_yaml": study.user_attrs.get("config_yaml"), "corpus": study.user_attrs.get("corpus"),
            "reason": reason, "texts": frozen.user_attrs.get("sample_texts", []) if row.get("is_end") else []}


def _named(summary, trial: int, step: Optional[int]) -> tuple[int, int]:
    """(trial, step) of a candidate the user named; its end when no step is given."""
    c = summary.candidates
    mine = c[c["number"] == trial]
    if mine.empty:
        raise UserError(f"trial {trial} has no measured candidate in this study; see candidates.csv on the study run.")
    if step is None:
        return trial, int(mine[mine["is_end"]]["step"].iloc[0])
    if step not in set(mine["step"]):
        raise UserError(f"trial {trial} was not measured at step {step}; its candidates are at steps "
                        f"{', '.join(str(s) for s in mine['step'])}.")
    return trial, int(step)


def export_cli(args) -> int:
    tracking_uri = resolve_uri(args.tracking_uri)
    if getattr(args, "step", None) is not None and getattr(args, "trial", None) is None:
        raise UserError("--step names a candidate of a trial; give --trial N with it.")
    info = load_selected(args.storage, args.study_name, tracking_uri, getattr(args, "trial", None),
                         getattr(args, "step", None))
    out = Path(args.out)
    retrained = not (info["checkpoint"] and Path(info["checkpoint"]).is_dir())
    with atomic_dir(out) as tmp:
        if retrained:
            print(f"gpt2ft: the checkpoint of trial {info['number']} at step {info['step']} was not kept; retraining "
                  "it to that step from its parameters and seed.", file=sys.stderr)
            _retrain(info, tmp, args)
        else:
            for item in Path(info["checkpoint"]).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        (tmp / "config.gpt2ft.yaml").write_text(info["config_yaml"] or "", encoding="utf-8")
        write_json_atomic({"study": info["study_name"], "trial": info["number"], "step": info["step"],
                           "params": info["params"],
                           "metrics": info["metrics"], "references": info["references"],
                           "retrained": retrained, "mlflow_run_id": info["mlflow_run_id"]},
                          tmp / "metrics.json")
        (tmp / "README.md").write_text(model_card(info, retrained), encoding="utf-8")
        _check_loads(tmp)
    print(f"exported trial {info['number']} at step {info['step']} of study {info['study_name']!r} to {out}")
    if not args.no_register:
        name = f"gpt2ft-{info['study_name']}"
        version = log_model(tracking_uri, info["mlflow_run_id"], out, name)
        print(f"logged as MLflow model {name} version {version}, alias 'champion'")
    return 0


def _check_loads(folder: Path) -> None:
    """The promise of the folder: plain transformers loads it and it generates."""
    pipe = pipeline("text-generation", model=str(folder))
    pipe("The", max_new_tokens=5, do_sample=False)


def _retrain(info: dict[str, Any], folder: Path, args) -> int:
    """Train the trial again from its parameters and seed, with the study's own trial settings
    (early stop included), into ``folder``; returns the steps it took."""
    if not info["config_yaml"]:
        raise UserError("the study does not record its config, so the trial cannot be retrained.")
    config: Config = build_config(yaml.safe_load(info["config_yaml"]))
    tcfg = candidate_train_config(config, info["params"], info["step"])
    assets = prepare(config, args.corpus or info["corpus"], classifier=False)
    seed_everything(tcfg.seed)
    model = assets.fresh_model()
    result = fit(tcfg, model, assets.data, None, assets.runtime, progress=not args.quiet)
    model.to("cpu").save_pretrained(folder)
    assets.tokenizer.save_pretrained(folder)
    if result.steps != info["step"]:  # the trial's own early stop cannot end a retrain before its step
        raise RuntimeError(f"retraining reached step {result.steps}, not the candidate's {info['step']}")
    (folder / "retrained.json").write_text(json.dumps({"params": info["params"], "seed": tcfg.seed,
                                                       "steps": result.steps}), encoding="utf-8")
    return result.steps
