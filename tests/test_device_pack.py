"""make device-pack's arithmetic (bench/device_pack.py): what travels is weighed as the device tool
sends it, and the wheels the GPU machine's image holds are dropped. The real download runs in
``make device-rehearse``; here pip is faked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import device_pack as D  # noqa: E402

sys.path.remove(str(BENCH))


def test_the_tree_weighs_tracked_and_untracked_files_but_not_ignored_ones(tmp_path, monkeypatch):
    git = ["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text(".carry/\n")  # 8 bytes, untracked
    (tmp_path / "tracked.py").write_text("x" * 10)
    subprocess.run([*git, "add", "tracked.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "t"], check=True)
    (tmp_path / "new.py").write_text("y" * 20)
    (tmp_path / ".carry").mkdir()
    (tmp_path / ".carry" / "big.whl").write_bytes(b"z" * 1000)
    monkeypatch.setattr(D, "ROOT", tmp_path)
    assert D.tree_bytes() == 10 + 20 + 8
    assert D.folder_bytes(tmp_path / ".carry") == 1000


def test_wheels_the_image_holds_are_dropped_and_listed_for_the_rehearsal(tmp_path, monkeypatch):
    made = ["mlflow-3.17.2-py3-none-any.whl", "Optuna_Integration-5.0.0-py3-none-any.whl",
            "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl", "PyYAML-6.0.4-cp312-cp312-manylinux2014_x86_64.whl"]

    def fake_pip(cmd, **kw):
        folder = Path(cmd[cmd.index("-d") + 1])
        for name in made:
            (folder / name).write_bytes(b"w")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(D.subprocess, "run", fake_pip)
    kept = D.download(tmp_path / "carry" / "wheels", "3.12")
    assert [w.name for w in kept] == ["Optuna_Integration-5.0.0-py3-none-any.whl", "mlflow-3.17.2-py3-none-any.whl"]
    assert sorted((tmp_path / "carry" / "from-image.txt").read_text().split()) == ["numpy", "pyyaml"]


def test_a_failed_download_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(D.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for mlflow==9"))
    with pytest.raises(SystemExit, match="pip download failed .*No matching distribution found for mlflow==9"):
        D.download(tmp_path / "wheels", "3.12")
