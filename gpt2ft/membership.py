"""Membership inference: can the model tell the text it was trained on from unseen text of the
same book?

The study's split is the design the surveys ask for (Meeus et al., SoK 2024): held-out segments
drawn through the whole book (every ``data.heldout_every``-th), so training and held-out text come
from one distribution and only training tells them apart; and the pretrained model is a free
reference, which the study has anyway. The samples are the extraction prompts
(``gpt2ft.extraction``: a 32-token prefix and its 32-token suffix at every offset of every window;
held-out prompts at most as many as training ones), scored from extraction's own teacher-forced
pass, so membership costs no pass of its own:

* the suffix's loss (mean nats per token given its prefix) under the model and, once per study
  (``assets.References.losses``), under the base model; the **reference-calibrated** score
  ``base loss - model loss`` (how much fine-tuning lowered this text's loss) gives ``mia_auc``, the
  ROC AUC (scikit-learn) of that score separating training from held-out prompts, with a bootstrap
  standard error (prompts of one window are not independent, so it is a lower bound);
* **Min-K%++** (Zhang et al., ICLR 2025), which needs no reference: per token
  ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t``, ``sigma_t`` the mean and spread of ``log p`` under
  the model's own next-token distribution, averaged over the lowest ``MIN_K`` of the suffix's tokens.

0.5 means the model cannot tell its training text from unseen text; 1 that it tells every prompt.
The base model's calibrated score is 0 for every prompt, so its ``mia_auc`` is 0.5 by construction;
its ``mia_auc_loss`` (the loss alone) says whether the two sides were equally hard before training.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

#: Share of a suffix's lowest-scoring tokens Min-K%++ averages (the paper's default, 20%).
MIN_K = 0.2
#: What :func:`membership` gives (``mia_auc_se`` beside ``mia_auc``).
METRICS = ("mia_auc", "mia_auc_loss", "mia_auc_minkpp")


def min_k_plus_plus(logp: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Per row, the Min-K%++ score from the full next-token log-probabilities ``logp`` (rows x
    positions x vocabulary) and the true tokens' own (``token``, rows x positions)."""
    plogp = logp.exp() * logp
    mu = plogp.sum(-1)
    # E[log p^2] as a batched dot product: one pass fewer than materialising p * log p * log p.
    sigma = (torch.einsum("...v,...v->...", plogp, logp) - mu.square()).clamp_min(1e-12).sqrt()
    z = (token - mu) / sigma
    k = max(1, int(math.ceil(MIN_K * z.shape[1])))
    return torch.topk(z, k, dim=1, largest=False).values.mean(dim=1)


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


def membership(loss: np.ndarray, minkpp: Optional[np.ndarray], base_loss: Optional[np.ndarray], n_train: int,
               draws: int, seed: int) -> dict[str, float]:
    """``mia_auc`` (+ ``_se``), ``mia_auc_loss`` and ``mia_auc_minkpp`` from per-prompt scores whose
    first ``n_train`` are training prompts; ``base_loss`` the base model's losses on the same prompts
    (NaN ``mia_auc`` without them); ``minkpp`` None when ``metrics.min_k_plus_plus`` is off."""
    out = {"mia_auc_loss": auc(-loss[:n_train], -loss[n_train:])}
    if minkpp is not None:
        out["mia_auc_minkpp"] = auc(minkpp[:n_train], minkpp[n_train:])
    if base_loss is None or len(base_loss) != len(loss):
        out["mia_auc"] = math.nan
        return out
    score = np.asarray(base_loss, dtype=np.float64) - loss
    out["mia_auc"] = auc(score[:n_train], score[n_train:])
    out["mia_auc_se"] = auc_se(score[:n_train], score[n_train:], draws, seed)
    return out
