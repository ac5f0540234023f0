"""The package's layer order, read from the imports: a module imports only from its own layer or below.

    config -> runs, streams, cli -> nets, losses -> data -> model -> eval -> viz -> train -> tables
        -> batch, bench, preflight, rehearsal, gpu_check, pretrained, diagnose

So nets, data, eval and viz never import train (run I/O is `runs`, a trained model is `model`);
viz sits below train because training writes sample grids with `viz.training`. Imports inside
functions count as much as those at the top of a file.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "viscoin_core"

# The first name after `viscoin_core.` -> its layer's rank; a module may import ranks <= its own.
RANKS = {
    "config": 0,
    "runs": 1, "streams": 1, "cli": 1,
    "nets": 2, "losses": 2,
    "data": 3,
    "model": 4,
    "eval": 5,
    "viz": 6,
    "train": 7,
    "tables": 8,
    "batch": 9, "bench": 9, "preflight": 9, "rehearsal": 9, "gpu_check": 9, "pretrained": 9, "diagnose": 9,
}
ROOT_RANK = 0   # `viscoin_core` itself (its __init__ holds only __version__)


def layer_of(module: str) -> str | None:
    """'viscoin_core.eval.concepts' -> 'eval'; None for the package itself or a module outside it."""
    parts = module.split(".")
    if parts[0] != "viscoin_core" or len(parts) == 1:
        return None
    return parts[1]


def imported_layers(source: str) -> list[tuple[int, str]]:
    """(line, layer) of every import of a viscoin_core module in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, layer_of(alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "viscoin_core":    # `from viscoin_core import runs, losses` names modules
                found += [(node.lineno, alias.name if alias.name in RANKS else None) for alias in node.names]
            else:
                found.append((node.lineno, layer_of(node.module)))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"line {node.lineno}: relative import; the layer check reads absolute ones")
    return [(line, layer) for line, layer in found if layer is not None]


def violations(source: str, own_layer: str) -> list[str]:
    """'line N: imports <layer>' for every import from a layer above `own_layer`."""
    own = RANKS[own_layer]
    return [f"line {line}: imports {layer}" for line, layer in imported_layers(source) if RANKS[layer] > own]


def module_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def own_layer(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return None if parts == ("viscoin_core", "__init__") else parts[1]


def test_every_module_belongs_to_a_layer():
    unknown = sorted({own_layer(p) for p in module_files()} - set(RANKS) - {None})
    assert not unknown, f"modules outside the layer table: {unknown}; give them a rank in RANKS"


@pytest.mark.parametrize("path", module_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_its_layer_or_below(path):
    layer = own_layer(path)
    source = path.read_text()
    if layer is None:
        assert not imported_layers(source), "the package __init__ imports nothing of its own"
        return
    unknown = [layer for _, layer in imported_layers(source) if layer not in RANKS]
    assert not unknown, f"{path.name} imports modules outside the layer table: {unknown}"
    assert not violations(source, layer), f"{path.relative_to(PACKAGE)} ({layer}): {violations(source, layer)}"


def test_the_check_catches_eval_importing_train():
    source = "import torch\n\ndef f():\n    from viscoin_core.train.loop import seed_everything\n"
    assert violations(source, "eval") == ["line 4: imports train"]
    assert violations("from viscoin_core import train\n", "viz") == ["line 1: imports train"]
    assert violations("from viscoin_core import runs, __version__\n", "nets") == []
    assert violations("import viscoin_core.eval.metrics\n", "nets") == ["line 1: imports eval"]
