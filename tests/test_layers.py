"""The package's layering, read from its imports with ``ast``: no cycle, pure modules stay
pure, each heavy framework is imported only by the module whose job it is, and no module grows
past the size of one concern. Subpackages count: ``gpt2ft/plots/theme.py`` is the module
``plots.theme``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpt2ft"

#: Modules that must import neither torch nor mlflow nor optuna (nor I/O-heavy frameworks):
#: plain functions over plain data, testable on literal inputs.
PURE = {"metrics", "pick", "ngram_index", "words", "fmt", "urls", "errors", "writer"}
#: Who may import each framework directly. MLflow is the tracking module's job; Optuna is the
#: study's (its loop), search's (its space and sampler) and coordination's (storage and workers);
#: peft is LoRA's (adapters, merging).
OWNERS = {"mlflow": {"tracking"}, "optuna": {"study", "search", "coordination"}, "optuna_integration": {"study"},
          "peft": {"lora"}}
#: A module owns one thing; past this many lines it holds two.
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name below ``gpt2ft`` (``plots.theme``; a
    subpackage's ``__init__.py`` is the subpackage, ``plots``)."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            out[".".join(parts)] = p
    return out


def _imports(path: Path) -> set[str]:
    """Names of everything ``path`` imports at run time, at any depth of the file (imports under
    ``if TYPE_CHECKING:`` exist for annotations only and are left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module.split(".")[0] == "gpt2ft":  # from gpt2ft import pick: a module, maybe
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``gpt2ft.plots.theme.styled`` is ``plots.theme``)."""
    modules = {name: _imports(p) for name, p in _modules().items()}

    def module_of(name: str) -> str | None:
        parts = name.split(".")[1:]
        return next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules), None)

    return {m: {d for d in (module_of(n) for n in deps if n.startswith("gpt2ft.")) if d and d != m}
            for m, deps in modules.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]) if dep in path
                            else f"import cycle through {dep}")
            if dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_framework(module):
    roots = {n.split(".")[0] for n in _imports(_modules()[module])}
    assert not roots & {"torch", "mlflow", "optuna", "transformers", "sklearn", "matplotlib", "pandas"}, roots


@pytest.mark.parametrize("framework", sorted(OWNERS))
def test_frameworks_are_imported_only_by_their_owner(framework):
    users = {m for m, p in _modules().items()
             if any(n == framework or n.startswith(framework + ".") for n in _imports(p))}
    assert users <= OWNERS[framework], f"{framework} imported by {sorted(users - OWNERS[framework])}"


def test_figure_data_is_prepared_apart_from_the_drawing():
    """What a figure shows is computed without matplotlib, so it is tested on plain tables."""
    roots = {n.split(".")[0] for n in _imports(_modules()["plots.prepare"])}
    assert not roots & {"matplotlib", "seaborn"}, roots


def test_no_module_over_the_size_of_one_concern():
    lengths = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in _modules().items()}
    assert lengths["plots.tradeoff"] > 0 and "cli" in lengths  # subpackages and top level alike
    over = {m: n for m, n in lengths.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split each by what it owns): {over}"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle test itself can fail: two modules importing each other are reported."""
    (tmp_path / "a.py").write_text("from gpt2ft import b\n")
    (tmp_path / "b.py").write_text("import gpt2ft.a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()


#: The study's loop class stays a loop: its trial, its parent run and its writes live elsewhere.
MAX_RUNNER_LINES = 150


def test_the_study_runner_stays_a_loop():
    tree = ast.parse((PACKAGE / "study.py").read_text(encoding="utf-8"))
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StudyRunner")
    lines = runner.end_lineno - runner.lineno + 1
    assert 0 < lines <= MAX_RUNNER_LINES, f"StudyRunner is {lines} lines (at most {MAX_RUNNER_LINES})"


#: What writes to MLflow runs, by module: the trial's run is created and its step metrics stream
#: during training (study, trial); after training only trial_writes (through logops) writes to it.
#: report and cli write the study's parent run, tracking is the client itself.
RUN_WRITERS = {"tracking", "logops", "trial_writes", "study", "trial", "report", "cli"}
WRITE_CALLS = {"log_metrics", "log_params", "set_tags", "log_text", "log_dict", "log_figure", "set_tag",
               "set_terminated", "log_batch", "fail_run", "mark_selected"}


def _write_calls(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.func.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in WRITE_CALLS]


def test_only_the_owners_write_to_runs():
    writers = {m for m, p in _modules().items() if _write_calls(p)}
    assert writers <= RUN_WRITERS, writers - RUN_WRITERS
    assert "trial_writes" in writers and "leaders" not in writers


def test_the_trial_writes_nothing_to_its_run_after_training():
    """trial.run_trial writes step metrics while it trains (its tracer) and hands its final writes
    to trial_writes; the study writes the trial's run only when creating it (params)."""
    trial_calls = _write_calls(PACKAGE / "trial.py")
    tree = ast.parse((PACKAGE / "trial.py").read_text(encoding="utf-8"))
    tracer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Tracer")
    assert trial_calls and all(tracer.lineno <= line <= tracer.end_lineno for _, line in trial_calls), trial_calls
    study_tree = ast.parse((PACKAGE / "study.py").read_text(encoding="utf-8"))
    study_calls = [(name, line) for name, line in _write_calls(PACKAGE / "study.py")]
    fn = next(n for n in study_tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_and_measure")
    trial_run = [c for c in study_calls if fn.lineno <= c[1] <= fn.end_lineno]
    assert [name for name, _ in trial_run] == ["log_params"], trial_run
