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
from transformers import AutoTokenizer, pipeline

from gpt2ft.assets import prepare
from gpt2ft.config import Config, build_config
from gpt2ft.coordination import default_storage, load_study
from gpt2ft.errors import UserError
from gpt2ft.fsutil import atomic_dir, write_json_atomic
from gpt2ft.fmt import duration, fmt
from gpt2ft.model import base_model, load_tokenizer
from gpt2ft.checkpoints import Checkpoints
from gpt2ft import judges as J
from gpt2ft import lora
from gpt2ft.summary import remeasure_key, summarize
from gpt2ft.tracking import resolve_uri, store_folder
from gpt2ft.trial_writes import log_model
from gpt2ft.trial import candidate_train_config, retrain, trial_train_config
from gpt2ft.train import seconds_per_step


def point_params(params: dict[str, Any], epoch: float) -> dict[str, Any]:
    """A candidate's hyperparameters as a researcher would train it: ``epochs`` is the point's own
    (epoch 2 of a 3-epoch trial is a 2-epoch model; a point inside an epoch keeps its fraction)."""
    if not math.isfinite(epoch):
        return dict(params)
    return {**params, "epochs": int(epoch) if float(epoch).is_integer() else round(float(epoch), 3)}


def _origin(info: dict[str, Any], retrain: Optional[dict[str, Any]]) -> str:
    """Where the weights come from, in the card."""
    if retrain is None:
        return f"Weights saved at step {info['step']} of the trial."
    text = (f"Retrained from the trial's hyperparameters and seed to step {info['step']} (its checkpoint was not "
            "kept); sample metrics below are those measured during the study")
    if retrain["bitwise"]:
        return text + " (on a CPU the retrain repeats the trial's arithmetic: the same weights)."
    return (text + f". Retrained on {retrain['device']}, whose kernels are not deterministic: these weights are "
            f"close to, not equal to, the measured ones (held-out loss {fmt(retrain['heldout_loss'])} against "
            f"{fmt(retrain['measured_heldout_loss'])} measured).")


def model_card(info: dict[str, Any], retrain: Optional[dict[str, Any]]) -> str:
    """The exported folder's README: the point's own numbers, hyperparameters (its epochs) and samples."""
    m, refs = info["metrics"], info["references"]
    keys = ("top100_ratio", "memorization", "memorization_4", "memorization_16", "longest_copy",
            "style_js", "style_prob", "extractable_rate", "heldout_loss", "fluency_ppl", "distinct_2", "train_loss")
    rows = "\n".join(f"| {k} | {fmt(m.get(k, math.nan))} | {fmt(refs.get('book_' + k, math.nan))} | "
                     f"{fmt(refs.get('base_' + k, math.nan))} |" for k in keys)
    samples = ("\n\n".join(f"> {t}" for t in info.get("texts", [])[:3])
               or "The samples of this point were not kept (it was measured while its trial trained).")
    params = point_params(info["params"], info.get("epoch", math.nan))
    trial_epochs = info["params"].get("epochs")
    at = f"epoch {fmt(info.get('epoch', math.nan))} of a {trial_epochs}-epoch trial" if trial_epochs else ""
    n = float(m.get("n_samples", math.nan))
    measured = f" ({n:.0f} samples)" if math.isfinite(n) else ""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2ft, gulliver]
---
# gpt2ft: study `{info['study_name']}`, trial {info['number']} at step {info['step']}

Fine-tuned on {Path(info.get('corpus') or "Gulliver's Travels").name} by gpt2ft. {info['reason']}.
{_origin(info, retrain)}
{_method(info)}
{_objective(info)}

Hyperparameters of this model (step {info['step']}, {at}): {', '.join(f'{k}={fmt(v)}' for k, v in params.items())}.

Its numbers at step {info['step']}{measured}:

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


def _method(info: dict[str, Any]) -> str:
    """The card's line on what was trained: every weight, or LoRA adapters (merged into the folder's
    weights), as ``trial_train_config`` set the trial up from its params and config."""
    if not info.get("config_yaml"):
        return ""
    t = trial_train_config(build_config(yaml.safe_load(info["config_yaml"])), info["params"])
    if t.method != "lora":
        return "Method: full fine-tuning (every weight trained; train.method=full)."
    targets = ", ".join(t.lora_target_modules or ()) or "every linear layer of the attention and MLP blocks"
    return (f"Method: LoRA through peft (lora_r={t.lora_r}, lora_alpha={fmt(t.lora_alpha or 2 * t.lora_r)}, "
            f"lora_dropout={fmt(t.lora_dropout)}, on {targets}): the base weights stayed frozen and low-rank "
            "adapters were trained; they are merged into this folder's weights, which load without peft.")


def _objective(info: dict[str, Any]) -> str:
    """The card's line on the training loss: the goldfish loss's k and h (the trial's searched k,
    else its config's ``train.goldfish_k``), or the plain loss."""
    train = (yaml.safe_load(info.get("config_yaml") or "") or {}).get("train", {})
    k, h = int(info["params"].get("goldfish_k", train.get("goldfish_k", 0))), train.get("goldfish_h", 13)
    if not k:
        return "Training loss: the plain next-token loss on every token (goldfish_k=0)."
    return (f"Training loss: the goldfish loss (goldfish_k={k}, goldfish_h={h}): about 1 in {k} of the "
            f"book's tokens, chosen by a hash of the {h} tokens before each, was left out of the loss in "
            "every epoch, so long spans of the book were never trained verbatim.")


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
    selected = key == summary.selected
    reason = (f"Selected by the balanced pick: {summary.pick.reason}" if selected else
              f"Named by the user (not the pick: {row.get('why_not') or 'eligible, not the best'})")
    again = study.user_attrs.get(remeasure_key(*key)) or {}
    return {"study_name": study.study_name, "number": key[0], "step": key[1],
            "epoch": float(row.get("epoch", math.nan)), "params": frozen.params, "selected": selected,
            "excluded_by": excluding_judges(row, summary.bounds), "why_not": row.get("why_not") or "",
            "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "checkpoint": str(Checkpoints(root).path(*key)) if root else None,
            "mlflow_run_id": frozen.user_attrs.get("mlflow_run_id"), "references": summary.references,
            "config_yaml": trial_config_yaml(study, frozen), "corpus": study.user_attrs.get("corpus"),
            "reason": reason, "sample_ids": again.get("sample_ids") or [],
            "texts": frozen.user_attrs.get("sample_texts", []) if row.get("is_end") else []}


def excluding_judges(row: dict[str, Any], bounds: J.Bounds) -> list[str]:
    """The judges that exclude a candidate row (the pick's: the degenerate guard, then copying)."""
    copying = J.copying_failures(J.judged_values(row), bounds)
    return (["degenerate"] if row.get("degenerate") else []) + [judge for judge, _ in copying]


def trial_config_yaml(study, trial) -> Optional[str]:
    """The config ``trial`` trained with: its own record (a study resumed with other ``--set``
    values trains its later trials under them), else the study's (an older study's trials)."""
    return trial.user_attrs.get("config_yaml") or study.user_attrs.get("config_yaml")


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
    what = f"trial {info['number']} at step {info['step']}"
    if info["excluded_by"]:
        print(f"gpt2ft: {what} is excluded by the {', '.join(info['excluded_by'])} judge"
              f"{'s' if len(info['excluded_by']) > 1 else ''} ({info['why_not']}); it is exported as named, "
              "never as the study's champion.", file=sys.stderr)
    out = Path(args.out)
    _write_folder(info, out, args)
    print(f"exported {what} of study {info['study_name']!r} to {out}")
    if not args.no_register:
        name = f"gpt2ft-{info['study_name']}"
        # The alias names the study's selected, eligible candidate only, never one a user named instead.
        alias = CHAMPION if info["selected"] else None
        version = log_model(tracking_uri, info["mlflow_run_id"], out, name, alias)
        print(f"logged as MLflow model {name} version {version}, " +
              (f"alias '{CHAMPION}'" if alias else f"without alias '{CHAMPION}' (it stays on the study's pick)"))
    return 0


#: The registry alias of the study's selected, eligible candidate.
CHAMPION = "champion"


def _write_folder(info: dict[str, Any], out: Path, args) -> None:
    """The exported folder: weights (the kept checkpoint, or retrained), config, metrics, card."""
    retrain = None
    with atomic_dir(out) as tmp:
        if not (info["checkpoint"] and Path(info["checkpoint"]).is_dir()):
            print(f"gpt2ft: the checkpoint of trial {info['number']} at step {info['step']} was not kept; retraining "
                  "it to that step from its parameters and seed.", file=sys.stderr)
            retrain = _retrain(info, tmp, args)
        elif lora.is_adapter_folder(info["checkpoint"]):
            _merge_adapter(info, tmp)
        else:
            for item in Path(info["checkpoint"]).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        if info["sample_ids"]:  # the point's re-measured samples, the ones its numbers describe
            tok = AutoTokenizer.from_pretrained(str(tmp))
            info["texts"] = [tok.decode(ids, skip_special_tokens=True) for ids in info["sample_ids"]]
        (tmp / "config.gpt2ft.yaml").write_text(info["config_yaml"] or "", encoding="utf-8")
        write_json_atomic({"study": info["study_name"], "trial": info["number"], "step": info["step"],
                           "epoch": info["epoch"], "params": point_params(info["params"], info["epoch"]),
                           "trial_params": info["params"], "selected": info["selected"],
                           "excluded_by": info["excluded_by"], "metrics": info["metrics"],
                           "references": info["references"], "retrained": retrain is not None, "retrain": retrain,
                           "mlflow_run_id": info["mlflow_run_id"]}, tmp / "metrics.json")
        (tmp / "README.md").write_text(model_card(info, retrain), encoding="utf-8")
        _check_loads(tmp)


def _merge_adapter(info: dict[str, Any], folder: Path) -> None:
    """A LoRA point's checkpoint (its adapter alone) merged onto the base model its trial started
    from, saved as whole weights: the folder needs neither peft nor the base model to load."""
    if not info["config_yaml"]:
        raise UserError("the study does not record its config, so the adapter's base model cannot be loaded.")
    config: Config = build_config(yaml.safe_load(info["config_yaml"]))
    tokenizer = load_tokenizer(config.model, config.data.cache_dir)
    model = lora.load_merged(base_model(config, tokenizer), info["checkpoint"])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _check_loads(folder: Path) -> None:
    """The promise of the folder: plain transformers loads it and it generates."""
    pipe = pipeline("text-generation", model=str(folder))
    pipe("The", max_new_tokens=5, do_sample=False)


def _retrain(info: dict[str, Any], folder: Path, args) -> dict[str, Any]:
    """``trial.retrain`` the candidate into ``folder`` with the config its trial trained with; returns
    what the retrain did (``retrained.json``): its steps, device, whether its weights are the
    measured ones bit for bit (a CPU's promise), and its held-out loss beside the measured one."""
    if not info["config_yaml"]:
        raise UserError("the study does not record its config, so the trial cannot be retrained.")
    config: Config = build_config(yaml.safe_load(info["config_yaml"]))
    assets = prepare(config, args.corpus or info["corpus"], classifier=False)
    # Before the hours a CPU may take: one step timed, at the trial's batch size.
    tcfg = candidate_train_config(config, info["params"], info["step"])
    step = seconds_per_step(assets.fresh_model(tcfg), tcfg, assets.data.train_windows, assets.runtime)
    print(f"gpt2ft: retraining {info['step']} steps takes about {duration(step * info['step'])} on "
          f"{assets.runtime.device.type} (one step timed: {step:.2g} s).", file=sys.stderr, flush=True)
    model, result = retrain(config, info["params"], info["step"], assets, progress=not args.quiet)
    lora.merged(model).to("cpu").save_pretrained(folder)  # a LoRA trial's adapters merged: a plain folder
    assets.tokenizer.save_pretrained(folder)
    if result.steps != info["step"]:  # a retrain has no early stop: only a bug ends it elsewhere
        raise RuntimeError(f"retraining reached step {result.steps}, not the candidate's {info['step']}")
    device = assets.runtime.device.type
    done = {"params": info["params"], "seed": config.train.seed, "steps": result.steps, "device": device,
            "bitwise": device == "cpu", "heldout_loss": result.heldout_curve[-1][1],
            "measured_heldout_loss": info["metrics"].get("heldout_loss", math.nan)}
    if not done["bitwise"]:
        print(f"gpt2ft: retrained on {device}: nondeterministic kernels make these weights close to, not equal "
              f"to, those measured (held-out loss {done['heldout_loss']:.4f}, measured "
              f"{done['measured_heldout_loss']:.4f}).", file=sys.stderr)
    (folder / "retrained.json").write_text(json.dumps(done), encoding="utf-8")
    return done
