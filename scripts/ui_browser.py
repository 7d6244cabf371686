"""Headless Chromium for the UI check: found (or installed with apt-get), a page rendered to its
final DOM and a screenshot, and the text a person reads on it.

A page is loaded in a fresh profile with a virtual-time budget (pending fetches pause it, so it
is not wall time); ``check_page`` renders until every expected string shows, with one retry
on a longer budget. A failure is a ``CheckFailed`` whose message says what was expected and
what was found.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# The browser reaches the UI under this name, mapped to 127.0.0.1 by --host-resolver-rules:
# on localhost the UI auto-opens its "MLflow Assistant" panel over a third of the page.
UI_HOST = "mlflow-ui-check"
WINDOW = (1400, 900)
BUDGET_MS = 20_000      # virtual time per page; pending fetches pause it, so this is not wall time
RETRY_BUDGET_MS = 45_000


class CheckFailed(Exception):
    """A check did not pass; the message says what was expected and what was found."""


class ChromiumUnavailable(CheckFailed):
    """Chromium is not installed and could not be installed."""


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 10 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def find_chromium() -> Optional[str]:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def ensure_chromium() -> str:
    """The Chromium executable, installed with apt-get (as root) when it is missing."""
    found = find_chromium()
    if found:
        return found
    if not shutil.which("apt-get"):
        raise ChromiumUnavailable("chromium is not installed and there is no apt-get here; "
                                  "install Chromium so that `chromium` is on PATH")
    if os.geteuid() != 0:
        raise ChromiumUnavailable("chromium is not installed and installing it needs root: "
                                  "run `sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise ChromiumUnavailable(f"`apt-get {' '.join(args)}` did not finish in 15 minutes") from None

    print("ui-check: chromium is missing; apt-get install -y chromium ...", file=sys.stderr, flush=True)
    result = apt("install", "-y", "chromium")
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        apt("update")
        result = apt("install", "-y", "chromium")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ChromiumUnavailable("`apt-get install -y chromium` failed, also after `apt-get update`: "
                                  + " | ".join(tail))
    found = find_chromium()
    if not found:
        raise ChromiumUnavailable("`apt-get install -y chromium` succeeded but no `chromium` is on PATH")
    return found


@dataclass
class Page:
    """One page rendered by Chromium: its DOM, its visible text and the screenshot."""
    url: str
    dom: str
    png: Path

    @property
    def text(self) -> str:
        return visible_text(self.dom)


def visible_text(dom: str) -> str:
    """The text a person reads: no scripts, styles or tags; whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def shows(text: str, s: str) -> bool:
    """``s`` occurs in ``text`` as a whole token: 'trial-1' is not found in 'trial-10'."""
    return re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text) is not None


def render(chromium: str, url: str, png: Path, budget_ms: int = BUDGET_MS,
           window: tuple[int, int] = WINDOW) -> Page:
    """Load ``url`` in a fresh headless profile; write a screenshot and return the final DOM."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    # ignore_cleanup_errors: a Chromium killed mid-write can leave its cache busy for a moment.
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", "--dump-dom", url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            dom, err = proc.communicate(timeout=budget_ms / 1000 + 60)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise CheckFailed(f"chromium did not finish loading {url} within {budget_ms / 1000 + 60:.0f} s")
        except BaseException:  # interrupted: leave no browser behind
            kill_group(proc)
            raise
    if proc.returncode != 0 or not png.is_file():
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise CheckFailed(f"chromium exited with {proc.returncode} on {url} without a screenshot: {tail}")
    return Page(url, dom, png)


def check_page(chromium: str, url: str, png: Path, expect: list[str],
               extra: Optional[Callable[[Page], Optional[str]]] = None, window: tuple[int, int] = WINDOW,
               budgets: tuple[int, int] = (BUDGET_MS, RETRY_BUDGET_MS)) -> Page:
    """Render ``url`` until its text holds every string in ``expect`` (one retry, longer budget)."""
    for budget in budgets:
        page = render(chromium, url, png, budget, window)
        text = page.text
        missing = [s for s in expect if not shows(text, s)]
        problem = extra(page) if extra and not missing else None
        if not missing and not problem:
            return page
        print(f"ui-check: {url}: {missing or problem} after {budget} ms of virtual time; retrying",
              file=sys.stderr, flush=True)
    what = f"missing {missing}" if missing else problem
    raise CheckFailed(f"{url} rendered without what it should show ({what}); see {png}. "
                      f"Rendered text starts: {text[:300]!r}")
