"""A trial's MLflow writes as data, applied in this process or in the writer process.

Rendering a trial's plots and storing its artifacts is Python-heavy work (matplotlib,
SQLAlchemy). In a thread beside the training loop it holds the GIL that every PyTorch call
must take back: on this CPU a GIL-bound thread made a small model's training steps 14x
slower, a separate process 2% slower (docs/performance.md). So the trial describes its writes here as
plain data ("ops": metrics, texts, tables, figure specs for ``gpt2ft.plots``, tags, the run's
end), which the writer process (``gpt2ft.writer``) applies with its own MLflow client; the
same ops applied in process serve ``gpt2ft train``, ``study.writer: inline`` and the replay.
"""
from __future__ import annotations

import time
from typing import Any

Op = tuple  # ("metrics", dict, step) | ("text", str, path) | ("dict", obj, path)
#           | ("figure", plots function name, kwargs, path) | ("tags", dict) | ("end", status)

_CLIENTS: dict[str, Any] = {}  # tracking URI -> MLflow client, one per writer process


def apply(run, ops: list[Op], step: int = 0) -> float:
    """Apply ``ops`` to ``run`` (a ``tracking.Run``) in order; log and return ``log_seconds``
    (before an ``end`` op, so a FINISHED run has it)."""
    from gpt2ft import plots

    t = time.perf_counter()
    for op in ops:
        kind = op[0]
        if kind == "end":
            run.log_metrics({"log_seconds": time.perf_counter() - t}, step)
            run.end(op[1])
        elif kind == "metrics":
            run.log_metrics(op[1], op[2])
        elif kind == "text":
            run.log_text(op[1], op[2])
        elif kind == "dict":
            run.log_dict(op[1], op[2])
        elif kind == "figure":
            run.log_figure(getattr(plots, op[1])(**op[2]), op[3])
        elif kind == "tags":
            run.set_tags(op[1])
        else:
            raise ValueError(f"unknown log op {kind!r}")
    seconds = time.perf_counter() - t
    if not ops or ops[-1][0] != "end":
        run.log_metrics({"log_seconds": seconds}, step)
    return seconds


def apply_remote(tracking_uri: str, run_id: str, ops: list[Op], step: int) -> float:
    """``apply`` in the writer process: its own MLflow client for ``tracking_uri``."""
    from gpt2ft.tracking import Run, client_for

    if tracking_uri not in _CLIENTS:
        _CLIENTS[tracking_uri] = client_for(tracking_uri)
    return apply(Run(_CLIENTS[tracking_uri], run_id), ops, step)
