"""List functions longer than the house limit (60 lines, decorators included).

Usage: python scripts/long_functions.py [FILE ...]   (default: every module of gpt2ft/)
Prints one line per offender and exits 1 if there is any, so it can gate CI.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60


def long_functions(path: str, limit: int = LIMIT) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in ``path`` longer than ``limit``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1
            if length > limit:
                out.append((node.name, node.lineno, length))
    return out


def main(paths: list[str]) -> int:
    found = [(p, *hit) for p in paths for hit in long_functions(p)]
    for path, name, line, length in found:
        print(f"{path}:{line}: {name} is {length} lines (limit {LIMIT})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(str(p) for p in Path("gpt2ft").rglob("*.py"))))
