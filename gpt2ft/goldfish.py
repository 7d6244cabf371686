"""The goldfish loss (Hans et al., NeurIPS 2024, "Be like a Goldfish, Don't Memorize!"): about
1/k of the training targets are left out of the loss, chosen by a hash of the h tokens before
each target, so the same passage drops the same tokens in every epoch, batch order and trial.
The model is never trained to predict those positions from the book, so it cannot learn a long
span of it verbatim, while what it learns of the language and style is barely touched.

Here it is a pure function of the token ids that returns ``labels``: the windows themselves
with the dropped targets set to the ignore index (-100), which transformers' own causal-LM
loss (``compiled.causal_lm_loss``) skips, in the eager and the compiled step alike. ``fit``
computes it once for all training windows (a fixed set), so a step pays one index, not a hash.

The hash is a polynomial hash of the context, mod the prime 2**31 - 1, over a fixed random
value per token id: the paper's "hash-table" strategy, with a window's first targets hashed on
the fewer than h tokens they have (every target can be dropped, so the share is 1/k, not
(L - h)/L/k). Held-out loss, the references and every judge use the plain loss on all tokens.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100  # transformers' (and torch's cross_entropy's) ignore index
_PRIME = 2**31 - 1
_SEED = 0x601DF15  # fixed, not the trial's seed: the mask must be the same in every trial
_TABLE_SIZE = 2**18  # above GPT-2's 50,257 and SmolLM2's 49,152 ids; larger ids wrap around
_TABLE: list[torch.Tensor] = []


def _table() -> torch.Tensor:
    """A fixed random value in [1, 2**31 - 1) per token id: the same in every process and batch
    (a table sized by the ids at hand would change with the batch)."""
    if not _TABLE:
        gen = torch.Generator().manual_seed(_SEED)
        _TABLE.append(torch.randint(1, _PRIME, (_TABLE_SIZE,), generator=gen, dtype=torch.int64))
    return _TABLE[0]


def dropped(ids: torch.Tensor, k: int, h: int = 13) -> torch.Tensor:
    """A bool tensor of ``ids``' shape (batch, length): True where the target is dropped from the
    loss. Position 0 is never a target (nothing predicts it) and is never dropped; position j is
    dropped when the hash of ``ids[j - h:j]`` (what the window has of it) is 0 mod k."""
    if k < 2:
        return torch.zeros_like(ids, dtype=torch.bool)
    ids = ids.to(torch.int64)
    values = _table().to(ids.device)[ids % _TABLE_SIZE]
    # A 0 before the window counts for nothing in the sum: short contexts hash what they have.
    padded = torch.nn.functional.pad(values, (h, 0))[:, :-1]  # padded[:, j + h - 1] = values[:, j - 1]
    contexts = padded.unfold(1, h, 1)  # (batch, length, h): the h values before each position
    weights = torch.tensor([pow(31, i + 1, _PRIME) for i in range(h)], dtype=torch.int64, device=ids.device)
    key = ((contexts * weights) % _PRIME).sum(-1) % _PRIME  # each product < 2**62: no overflow
    # A last multiply-and-mod spreads the key before it is reduced mod k (k need not be prime).
    out = ((key * 2654435761) % _PRIME) % k == 0
    out[:, 0] = False
    return out


def labels(ids: torch.Tensor, k: int, h: int = 13) -> torch.Tensor:
    """``ids`` with the dropped targets set to the ignore index: the ``labels`` of the goldfish
    loss (``ids`` itself when k is 0, so the plain loss is exactly the plain loss)."""
    if k < 2:
        return ids
    return ids.masked_fill(dropped(ids, k, h), IGNORE_INDEX)
