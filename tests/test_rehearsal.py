"""A slice of `make rehearsal`: one row of each stage, through its notebook, at the paper's sizes.

The slice runs in a copy of the project's params and notebooks, so a user's own rehearsal runs are
never touched: data caches, run directories and the rehearsal inputs all go under a temporary root.
"""

import json
import shutil
from pathlib import Path

import pytest

from viscoin_core import batch, rehearsal
from viscoin_core.data.cub import read_cub
from viscoin_core.nets.stylegan2 import paper256_kwargs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root the notebooks resolve to (pyproject.toml + viscoin_core/ mark it), with inputs."""
    root = tmp_path_factory.mktemp("rehearsal")
    for folder in ("params", "notebooks"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "viscoin_core").mkdir()
    rehearsal.make_inputs(root / rehearsal.ROOT)
    return root


def test_the_miniature_cub_tree_has_the_archives_quirks(project):
    tree = project / rehearsal.ROOT / "CUB_200_2011"
    assert (tree.parent / "attributes.txt").is_file() and not (tree / "attributes.txt").exists()
    assert any(len(line.split()) == 6 for line in (tree / "attributes" / "image_attribute_labels.txt").read_text().splitlines())
    assert "." in (tree / "bounding_boxes.txt").read_text().split()[1]   # float boxes
    from PIL import Image
    modes = {Image.open(p).mode for p in (tree / "images").rglob("*.jpg")}
    assert {"L", "CMYK", "RGB"} <= modes
    raw = read_cub(tree)
    assert len(raw.class_names) == len(rehearsal.CUB_CLASSES)


def test_one_row_per_stage_runs_at_the_papers_sizes(project):
    runs = [batch.plan(table, "rehearsal", root=project)[0] for table in ("table1", "table2", "table3")]
    assert [r.label for r in runs] == ["CUB-200", "CUB-200, from FFHQ-256, 1.5M images", "VisCoIN (study settings)"]
    status = batch.run_all(runs)
    assert list(status.values()) == ["done"] * 3, status
    f_run, g_run, v_run = (json.loads((r.run_dir / "config.json").read_text())["config"] for r in runs)
    assert (f_run["arch"], f_run["batch_size"]) == ("resnet50", 32)
    assert g_run["batch"] == 8 and g_run["start"].endswith("ffhq-res256-mirror-paper256-noaug.pkl")   # budget_g.yaml
    assert (v_run["n_concepts"], v_run["coarse_layer"], v_run["mid_layer"], v_run["latent_channels"]) == (256, 3, 12, 512)
    metrics = json.loads((runs[2].run_dir / "metrics.json").read_text())
    assert (metrics["fid_features"], metrics["lpips_backbone"]) == ("inception_random", "random")
    assert metrics["n_test_images"] == 12 and set(metrics["faithfulness"]) and metrics["consistency"]["n_concepts"] >= 1
    manifest = json.loads((project / "data_cache" / "rehearsal" / "cub" / "manifest.json").read_text())
    assert manifest["settings"]["resolution"] == 256
    from viscoin_core.nets.stylegan2 import load_generator
    G = load_generator(runs[1].run_dir / "G.pt")
    assert (G.img_resolution, G.num_ws) == (256, 14) and G.init_kwargs["w_dim"] == paper256_kwargs()[0]["w_dim"]
