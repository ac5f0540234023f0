"""Refresh the expected outputs of the cells CI checks, and strip every other output.

Notebooks are stored without outputs, except the cells marked `# NBVAL_CHECK_OUTPUT`: their stored
text is what `pytest --nbval-lax` compares a fresh run against, so it must come from a real run.
This executes each notebook with its default (smoke) parameters up to its last checked cell, copies
those cells' outputs in, and clears all the others.

    .venv/bin/python notebooks/refresh_checked_outputs.py [notebooks/04_cub_reproduction.ipynb ...]
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "# NBVAL_CHECK_OUTPUT"
HERE = Path(__file__).resolve().parent


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(MARK)


def refresh(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    checked = [i for i, cell in enumerate(nb.cells) if is_checked(cell)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if checked:
        partial = nbformat.from_dict({**nb, "cells": nb.cells[: checked[-1] + 1]})
        partial = nbformat.from_dict(nbformat.reads(nbformat.writes(partial), as_version=4))
        NotebookClient(partial, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        for i in checked:
            nb.cells[i].outputs = partial.cells[i].outputs
            nb.cells[i].execution_count = 1
    nbformat.write(nb, path)
    return len(checked)


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: {refresh(path)} checked cell(s) refreshed")
