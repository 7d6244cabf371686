"""Membership inference: can the model tell the windows it was trained on from unseen windows of the
same book?

The study's split is the design the surveys ask for (Meeus et al., SoK 2024): held-out segments
drawn through the whole book (every ``data.heldout_every``-th), so training and held-out windows
come from one distribution and only training tells them apart; and the pretrained model is a free
reference, which the study has anyway. Per window, from one forward pass:

* the loss (mean nats per token) of the model and, once per study (``assets.References.losses``), of
  the base model; the **reference-calibrated** score ``base loss - model loss`` (how much
  fine-tuning lowered this window's loss) gives ``mia_auc``, the ROC AUC (scikit-learn) of that
  score separating training from held-out windows, with a bootstrap standard error;
* **Min-K%++** (Zhang et al., ICLR 2025), which needs no reference: per token
  ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t``, ``sigma_t`` the mean and spread of ``log p`` under
  the model's own next-token distribution, averaged over the lowest ``MIN_K`` of a window's tokens.

0.5 means the model cannot tell its training text from unseen text; 1 that it tells every window.
The base model's calibrated score is 0 for every window, so its ``mia_auc`` is 0.5 by construction;
its ``mia_auc_loss`` (the loss alone) says whether the two sides were equally hard before training.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from gpt2ft.extraction import spread
from gpt2ft.model import Runtime

#: Share of a window's lowest-scoring tokens Min-K%++ averages (the paper's default, 20%).
MIN_K = 0.2
#: What :func:`membership` gives (``mia_auc_se`` beside ``mia_auc``).
METRICS = ("mia_auc", "mia_auc_loss", "mia_auc_minkpp")
#: Windows per forward pass: each keeps window x vocabulary float logits (8 x 256 x 50k: 400 MB).
BATCH = 8


def windows_of(train: torch.Tensor, heldout: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows membership is measured on: at most ``cap`` training windows, evenly spread over
    the slice, and every held-out window; the same for the base model and every trial."""
    return train[spread(train.shape[0], cap)], heldout


@torch.no_grad()
def window_scores(model, runtime: Runtime, windows: torch.Tensor, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Per window: (loss in nats per token, Min-K%++ score), one pass each batch."""
    losses, minkpp = [], []
    was_training = model.training
    model.eval()
    for i in range(0, windows.shape[0], batch):
        ids = windows[i:i + batch].to(runtime.device)
        with runtime.autocast():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        token = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
        z = (token - mu) / sigma
        k = max(1, int(math.ceil(MIN_K * z.shape[1])))
        losses.append((-token.mean(dim=1)).double().cpu())
        minkpp.append(torch.topk(z, k, dim=1, largest=False).values.mean(dim=1).double().cpu())
    model.train(was_training)
    if not losses:
        return np.zeros(0), np.zeros(0)
    return torch.cat(losses).numpy(), torch.cat(minkpp).numpy()


def auc(member: Sequence[float], nonmember: Sequence[float]) -> float:
    """ROC AUC of a score (higher = more likely a member) separating the two sides; NaN when a
    side is empty. Ties count a half, so identical scores give exactly 0.5."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(member, dtype=np.float64), np.asarray(nonmember, dtype=np.float64)
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.nan
    return float(roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b]))


def auc_se(member: Sequence[float], nonmember: Sequence[float], draws: int, seed: int) -> float:
    """Bootstrap standard error of :func:`auc`: both sides resampled with replacement, separately
    (their sizes are fixed by the split), ``draws`` times."""
    a, b = np.asarray(member, dtype=np.float64), np.asarray(nonmember, dtype=np.float64)
    if draws <= 1 or a.size < 2 or b.size < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    values = [auc(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)]) for _ in range(draws)]
    return float(np.nanstd(values, ddof=1))


def membership(loss: np.ndarray, minkpp: np.ndarray, base_loss: np.ndarray, n_train: int,
               draws: int, seed: int) -> dict[str, float]:
    """``mia_auc`` (+ ``_se``), ``mia_auc_loss`` and ``mia_auc_minkpp`` from per-window scores whose
    first ``n_train`` are training windows; ``base_loss`` the base model's losses on the same windows
    (NaN ``mia_auc`` without them)."""
    out = {"mia_auc_loss": auc(-loss[:n_train], -loss[n_train:]),
           "mia_auc_minkpp": auc(minkpp[:n_train], minkpp[n_train:])}
    if base_loss is None or len(base_loss) != len(loss):
        out["mia_auc"] = math.nan
        return out
    score = np.asarray(base_loss, dtype=np.float64) - loss
    out["mia_auc"] = auc(score[:n_train], score[n_train:])
    out["mia_auc_se"] = auc_se(score[:n_train], score[n_train:], draws, seed)
    return out
