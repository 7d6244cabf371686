"""Several study workers on one machine: how many, starting them, and stopping them together.

``gpt2ft study --jobs N`` is one supervising process and N worker processes. Processes, not
threads: on a GPU a small model's step is bound by Python's kernel-launch time, which threads
would share under one interpreter lock. The workers share the Optuna study and the MLflow
parent run exactly as separate ``gpt2ft study`` commands on a database do; this module only
starts them, splits the CPU cores among them, prefixes their output with their index, replaces
one that a signal killed, passes Ctrl-C / SIGTERM on, and makes sure none outlives the
supervisor (``PR_SET_PDEATHSIG`` on
Linux, a watch on the parent pid everywhere). On a machine with several GPUs, worker i gets
the i-th of them, round the list, as its only visible one (``CUDA_VISIBLE_DEVICES``), and
``auto`` counts workers per GPU.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Mapping, Optional, Sequence, Union

import torch

from gpt2ft.errors import TrialsFailing, UserError
from gpt2ft.model import n_params

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "GPT2FT_SUPERVISOR_PID"
THREADS_ENV = "GPT2FT_WORKER_THREADS"  # the supervisor's share of the cores for each worker
CUDA_CONTEXT_BYTES = 600 * 2**20  # a CUDA context and the caching allocator's slack, per process
MEMORY_SHARE = 0.85  # of the GPU's free memory that auto may plan for: fragmentation, sampling
MAX_AUTO_JOBS = 8  # per GPU, measured on an H200: 4 processes gave 3.2x one, 8 about 5x; more adds little
STOP_SECONDS = 20.0  # after Ctrl-C, how long workers get to close their trials before SIGKILL
POLL_SECONDS = 0.2  # how often the supervisor looks for a worker that ended
WORKER_PROGRAM = (sys.executable, "-m", "gpt2ft.cli")


def worker_bytes(n_params: int, n_layer: int, hidden: int, vocab: int, batch: int, block: int) -> int:
    """GPU memory one worker needs to train this model at this batch: fp32 weights, grads and
    AdamW's two moments (16 bytes a parameter), the base model every worker keeps on the device
    (4 more: trials copy it), its bf16 copy that judges fluency and the bf16 copy a measurement
    decodes with (2 + 2 more; gpt2ft.sampler), 16-bit activations without recomputation
    (~34 bytes per token, layer and hidden unit, Korthikanti et al. 2022), the logits in bf16
    and fp32 plus their gradient (~12 bytes per token and vocabulary entry), and a context."""
    tokens = batch * block
    return 24 * n_params + 34 * tokens * n_layer * hidden + 12 * tokens * vocab + CUDA_CONTEXT_BYTES


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(cores: int, jobs: int) -> int:
    """CPU threads each of ``jobs`` workers may run: the cores split evenly, at least one.
    Unlimited, every worker's torch would start a thread per core: ``jobs`` times the cores."""
    return max(1, cores // max(jobs, 1))


def auto_jobs(per_worker: int, free_bytes: Union[None, int, Sequence[int]], cores: int) -> int:
    """Workers that fit: each needs ``per_worker`` bytes of its GPU's free memory (less
    headroom) and a core of its own to launch kernels, one core left for the supervisor.
    ``free_bytes`` is one GPU's free memory or a list, one per GPU: workers go round the GPUs
    evenly, so every GPU takes as many as the one with the least free memory.
    ``free_bytes`` None (or no GPU) means one worker (CPU threads already use every core)."""
    frees = [free_bytes] if isinstance(free_bytes, int) else list(free_bytes or [])
    if not frees:
        return 1
    per_gpu = min(MAX_AUTO_JOBS, *(int(f * MEMORY_SHARE // max(per_worker, 1)) for f in frees))
    return max(1, min(per_gpu * len(frees), cores - 1))


def resolve_jobs(value: str, assets) -> int:
    """``study.jobs`` as a number: itself, or ``auto`` worked out for this model and the
    largest batch of the search space on this machine."""
    if value != "auto":
        return int(value)
    if assets.runtime.device.type != "cuda":
        return 1
    c, mc = assets.config, assets.base_model.config
    need = worker_bytes(n_params(assets.base_model), mc.num_hidden_layers, mc.hidden_size, mc.vocab_size,
                        max(c.study.batch_size), c.data.block_size)
    frees = gpu_free_bytes()
    n = auto_jobs(need, frees, cpu_cores())
    print(f"gpt2ft: --jobs auto: {n} workers over {len(frees)} GPU{'s' if len(frees) > 1 else ''} "
          f"({need / 2**30:.1f} GiB each planned, {min(frees, default=0) / 2**30:.1f} GiB free on the "
          f"fullest GPU, {cpu_cores()} cores)", file=sys.stderr)
    return n


def gpu_free_bytes() -> list[int]:
    """Free memory of each GPU this process sees. Asking creates a CUDA context on each (a few
    hundred MiB, kept by the supervisor): the price of sizing by what is free, not the total."""
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def visible_gpus(env: Optional[Mapping[str, str]] = None) -> list[str]:
    """The GPUs a worker may be given, as ``CUDA_VISIBLE_DEVICES`` names them: the user's own
    list if set (indices or UUIDs; only the prefix CUDA accepted, as it stops at a bad entry),
    else every GPU's index. Empty without a GPU."""
    env = os.environ if env is None else env
    count = torch.cuda.device_count()
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [g.strip() for g in listed.split(",") if g.strip()][:count]


def worker_envs(n: int, env: Mapping[str, str], gpus: Sequence[str]) -> list[dict[str, str]]:
    """The environment of each of ``n`` workers: worker i sees GPU ``gpus[i % len(gpus)]`` only
    (as its ``cuda:0``), so the workers spread evenly; unchanged without a GPU."""
    if not gpus:
        return [dict(env) for _ in range(n)]
    return [{**env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]


def become_worker() -> None:
    """In a worker: use its share of the cores (:func:`threads_per_worker`), die with the
    supervisor, and treat SIGTERM like Ctrl-C so the running
    trial is closed (FAIL in Optuna, KILLED in MLflow) rather than left RUNNING."""
    signal.signal(signal.SIGTERM, _interrupt_once)
    signal.signal(signal.SIGINT, _interrupt_once)
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The supervisor may have died before prctl ran; and elsewhere there is no prctl at all.
    if parent and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    if parent:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_once(signum, frame) -> None:
    """The first SIGINT/SIGTERM interrupts; later ones must not break the trial's clean-up
    (the supervisor's SIGKILL after :data:`STOP_SECONDS` is the backstop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    # A dead supervisor sends no SIGKILL after STOP_SECONDS, so this thread is the backstop: a
    # clean-up that hangs (a store or writer that never answers) must not keep the worker alive;
    # its trial stays RUNNING and the next command's fail_orphans fails it.
    time.sleep(STOP_SECONDS)
    os._exit(1)


def _pump(index: int, stream: IO[bytes], out: IO[str]) -> None:
    """Copy a worker's output line by line, each prefixed with its index."""
    for raw in iter(stream.readline, b""):
        out.write(f"[w{index}] {raw.decode(errors='replace')}")
        out.flush()


@dataclass(frozen=True)
class Exit:
    """How one worker process ended: its index, its exit code (negative: the signal that killed
    it), and whether a replacement was started in its place."""

    index: int
    code: int
    replaced: bool = False


def supervise(argvs: Sequence[Sequence[str]], env: Optional[dict[str, str]] = None,
              gpus: Optional[Sequence[str]] = None,
              program: Sequence[str] = WORKER_PROGRAM) -> list[Exit]:
    """Run one worker process per argv (``python -m gpt2ft.cli ...``) until all exit; return how
    each process ended, in the order they ended. Worker i sees one GPU, ``gpus[i % len(gpus)]``
    (default: every GPU this process sees, :func:`visible_gpus`).

    A worker killed by a signal (the out-of-memory killer's SIGKILL) while others still work is
    replaced once by a new worker of the same index: the study it shared goes on (the others
    fail its trial once its heartbeat is stale and take the slot). Ctrl-C or SIGTERM here is
    passed to every worker, which then gets :data:`STOP_SECONDS` to close its trial before it is
    killed; the interrupt is re-raised."""
    env = {**(env or os.environ), PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1",
           THREADS_ENV: str(threads_per_worker(cpu_cores(), len(argvs)))}
    gpus = visible_gpus(env) if gpus is None else gpus
    envs = worker_envs(len(argvs), env, gpus)
    if gpus:
        print("gpt2ft: workers on GPUs (CUDA_VISIBLE_DEVICES): "
              + ", ".join(f"w{i}={e['CUDA_VISIBLE_DEVICES']}" for i, e in enumerate(envs)), file=sys.stderr)
    procs: dict[int, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    exits: list[Exit] = []

    def start(i: int) -> None:
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
        # exactly one SIGINT on; a supervisor killed outright takes them down by PDEATHSIG.
        p = subprocess.Popen([*program, *argvs[i]], env=envs[i], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
        procs[i] = p
        pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, sys.stderr), daemon=True))
        pumps[-1].start()

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for i in range(len(argvs)):
            start(i)
        while procs:
            for i, p in list(procs.items()):
                if p.poll() is None:
                    continue
                del procs[i]
                again = p.returncode < 0 and bool(procs) and not any(e.index == i for e in exits)
                exits.append(Exit(i, p.returncode, replaced=again))
                if again:
                    print(f"gpt2ft: worker {i} {how_it_ended(p.returncode)}; starting a replacement",
                          file=sys.stderr, flush=True)
                    start(i)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        _stop(list(procs.values()))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for t in pumps:
            t.join(timeout=5)
    return exits


def how_it_ended(code: int) -> str:
    """A worker's exit code in words."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = " (as the kernel's out-of-memory killer does)" if -code == signal.SIGKILL else ""
    return f"was killed by {name}{why}"


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT to every live worker, then SIGKILL whoever is still there after the grace."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass(frozen=True)
class Outcome:
    """What the workers' exits mean for the study (:func:`check_codes`)."""

    gave_up: bool
    """A worker stopped because its trials kept failing (``study.max_failures``): the study still
    ends, with what completed logged and picked."""
    died: Optional[str]
    """One sentence naming each worker that died and how, or None: the study's finish still runs
    (the others took its slot), and the command then ends non-zero with it."""


def check_codes(exits: Sequence[Exit]) -> Outcome:
    """A user error (exit 2) is raised at once, as one sentence: every worker shares the input. A
    worker that died otherwise (a signal, an exception) does not stop the study's finish: the
    others completed the trials or a later run does; it is reported in :attr:`Outcome.died`."""
    users = [e.index for e in exits if e.code == 2]
    if users:
        raise UserError(f"worker {users[0]} stopped on a user error (exit 2); its message is above, "
                        "prefixed with its index.")
    dead = [e for e in exits if e.code not in (0, TrialsFailing.exit_code)]
    died = "; ".join(f"worker {e.index} {how_it_ended(e.code)}"
                     + (", and a replacement took its place" if e.replaced else "") for e in dead)
    return Outcome(gave_up=any(e.code == TrialsFailing.exit_code for e in exits), died=(died + (
        " (its output is above, prefixed with its index)" if dead else "")) or None)
