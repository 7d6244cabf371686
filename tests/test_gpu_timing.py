"""The step timer on CUDA, checked on the CPU with a fake CUDA: a step's time comes from events
recorded on the stream, they are read only where ``fit`` syncs anyway (the log interval's loss
read), and evaluation and trajectory points start only after the queued steps are done."""
from __future__ import annotations

import time

import pytest
import torch

import gpt2ft.train as train
from gpt2ft.config import TrainConfig
from gpt2ft.data import TokenData
from gpt2ft.model import resolve_runtime

GPU_MS = 20.0  # the fake device's time between two recorded events


class FakeCuda:
    """A stream that runs nothing: events are stamped GPU_MS apart and count as finished only
    once a sync reached them; reading an unfinished one raises, as CUDA does."""

    def __init__(self):
        self.events: list["FakeCuda.Event"] = []
        self.device_syncs = 0
        self.event_syncs = 0
        cuda = self

        class Event:
            def __init__(self, enable_timing: bool = False):
                assert enable_timing
                self.ms, self.done = None, False

            def record(self):
                self.ms = GPU_MS * len(cuda.events)
                cuda.events.append(self)

            def synchronize(self):
                cuda.event_syncs += 1
                for e in cuda.events[:cuda.events.index(self) + 1]:
                    e.done = True

            def elapsed_time(self, end) -> float:
                if not (self.done and end.done):
                    raise RuntimeError("Both events must be completed before calculating elapsed time.")
                return end.ms - self.ms

        self.Event = Event

    def synchronize(self):
        self.device_syncs += 1
        for e in self.events:
            e.done = True

    def all_done(self) -> bool:
        return all(e.done for e in self.events)


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    monkeypatch.setattr(train, "step_timer", lambda device: train.CudaStepTimer())
    return fake


class _Scalar(torch.nn.Module):
    """A one-parameter model; in eval mode (held-out loss) it checks no step is still queued."""

    def __init__(self, fake: FakeCuda | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.fake = fake

    def forward(self, input_ids, labels=None):
        if not self.training and self.fake is not None:
            assert self.fake.all_done(), "evaluation started with steps still queued"
        return type("Out", (), {"logits": self.w * torch.zeros(*input_ids.shape, 2)})()  # two-token vocabulary


def _fit(steps: int, model, **kwargs):
    windows = torch.zeros((steps, 4), dtype=torch.long)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=1, log_every=4, eval_every=0, device="cpu")
    data = TokenData(windows, windows[:2], [0] * 8, [0] * 8, 4)
    return train.fit(cfg, model, data, None, resolve_runtime(cfg), progress=False, **kwargs)


def test_cuda_spans_come_from_events_read_after_one_wait(fake_cuda):
    timer = train.CudaStepTimer()
    for _ in range(50):
        timer.start()
        time.sleep(0.001)  # host time, which must not count
        timer.stop()
    assert fake_cuda.device_syncs == fake_cuda.event_syncs == 0  # start and stop never wait
    assert timer.seconds == pytest.approx(50 * GPU_MS / 1e3)
    assert (fake_cuda.device_syncs, fake_cuda.event_syncs) == (0, 1)  # one wait, on the last event
    assert timer.seconds == pytest.approx(50 * GPU_MS / 1e3) and fake_cuda.event_syncs == 1  # nothing new
    timer.start()
    timer.stop()
    timer.drain()
    assert fake_cuda.device_syncs == 1 and timer.seconds == pytest.approx(51 * GPU_MS / 1e3)


@pytest.mark.parametrize("steps", [12, 24])
def test_fit_on_cuda_syncs_per_log_interval_not_per_step(fake_cuda, steps):
    res = _fit(steps, _Scalar(fake_cuda))
    assert res.steps == steps
    assert res.step_seconds == pytest.approx(steps * GPU_MS / 1e3)  # the events' time, not the host's
    assert fake_cuda.event_syncs == steps // 4  # one per log interval (log_every 4), after its loss read
    assert fake_cuda.device_syncs == 2  # before the held-out loss at step 0 and at the end only


def test_fit_on_cuda_drains_before_a_trajectory_point(fake_cuda):
    seen = []

    def on_point(step, epoch):
        seen.append((step, fake_cuda.all_done()))

    res = _fit(10, _Scalar(fake_cuda), on_point=on_point, point_every=3)
    assert seen == [(3, True), (6, True), (9, True)]  # never billed for queued steps
    assert fake_cuda.device_syncs == 2 + 3  # two held-out losses, three points
    assert res.step_seconds == pytest.approx(10 * GPU_MS / 1e3)


def test_fit_on_cpu_keeps_the_host_clock(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("the CPU path touched torch.cuda")

    monkeypatch.setattr(torch.cuda, "Event", no_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    assert type(train.step_timer(torch.device("cpu"))) is train.StepTimer
    t = time.perf_counter()
    res = _fit(8, _Scalar())
    assert 0 < res.step_seconds < time.perf_counter() - t
