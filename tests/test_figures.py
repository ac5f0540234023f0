"""Figures and the whole evaluation on a tiny trained system; Grad-CAM against a hand computation."""

import json
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn as nn

from viscoin_core.eval import METRIC_KEYS, evaluate, evaluated
from viscoin_core.eval.concepts import class_relevance, concept_pool, concept_relevance
from viscoin_core.runs import read_jsonl
from viscoin_core.viz import figures


def test_grad_cam_on_a_two_layer_network_equals_the_manual_computation():
    torch.manual_seed(0)
    conv1 = nn.Conv2d(2, 3, 3, padding=1)
    conv2 = nn.Conv2d(3, 1, 1)                    # 1x1, linear: dy/dA_c = w2_c / (h w) at every pixel

    def forward(x):
        return conv2(torch.relu(conv1(x))).mean(dim=(1, 2, 3))
    x = torch.randn(2, 2, 5, 4)
    cam = figures.grad_cam(forward, conv1, x)
    with torch.no_grad():
        A = conv1(x)                               # the hooked layer's output (before the ReLU)
        # Through the ReLU, dy/dA_c = w2_c / (h w) where A_c > 0 and 0 elsewhere.
        grad = conv2.weight[0, :, 0, 0][None, :, None, None] * (A > 0) / (5 * 4)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        expected = torch.relu((weights * A).sum(dim=1))
    assert cam.shape == (2, 5, 4)
    assert torch.allclose(cam, expected, atol=1e-6)
    with pytest.raises(ValueError, match="one value per sample"):
        figures.grad_cam(lambda x: conv1(x), conv1, x)


def test_select_concepts_by_threshold_or_top_k():
    row = torch.tensor([0.2, 0.9, float("nan"), 0.6, -1.0])
    assert figures.select_concepts(row, threshold=0.5) == [1, 3]
    assert figures.select_concepts(row, top_k=3) == [1, 3, 0]


def _written(stem):
    for suffix in (".png", ".pdf"):
        path = stem.parent / (stem.name + suffix)
        assert path.is_file() and path.stat().st_size > 1000, path


def test_curves_and_metric_plots_write_png_and_pdf(tmp_path):
    log = [{"iteration": i, "split": "train", "total": 1.0 / (i + 1), "rec_lpips": 0.5} for i in range(1, 30)]
    log += [{"iteration": i, "split": "test", "g_accuracy": 10.0 + i, "total": 1.2 / (i + 1)} for i in (10, 20, 29)]
    log += [{"iteration": i, "fid": 50.0 - i, "kid": 0.1, "fid_features": "classifier"} for i in (5, 15, 25)]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log))
    fig = figures.training_curves(path, keys=["total", "g_accuracy"], smooth=3, out=tmp_path / "curves")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["total", "g_accuracy"]
    _written(tmp_path / "curves")
    figures.fid_curve(path, out=tmp_path / "fid.png")
    _written(tmp_path / "fid")
    figures.fid_curve(path, out=tmp_path / "001.Black_footed")     # dots in a stem stay
    _written(tmp_path / "001.Black_footed")
    figures.top_n_curve({"2": 20.0, "4": 35.0, "8": 40.0}, g_accuracy=40.0, published={2: 10.0, 8: 30.0},
                        out=tmp_path / "top_n")
    _written(tmp_path / "top_n")
    figures.faithfulness_plot({"0.1": 0.3, "0.2": 0.2, "0.4": 0.05}, {"0.1": 0.02, "0.2": 0.01, "0.4": 0.0},
                              out=tmp_path / "faith")
    _written(tmp_path / "faith")
    figures.factor_alignment_bars({"per_factor": {"a": 0.8, "b": 0.3}, "mean": 0.55,
                                   "untrained": {"per_factor": {"a": 0.2, "b": 0.1}, "mean": 0.15}},
                                  out=tmp_path / "align")
    _written(tmp_path / "align")
    r_kc = torch.rand(4, 10) * 2 - 1
    r_kc[2] = float("nan")
    figures.relevance_heatmap(r_kc, ["a", "b", "c", "d"], out=tmp_path / "heat")
    _written(tmp_path / "heat")
    with pytest.raises(ValueError, match="none of"):
        figures.training_curves(path, keys=["missing"])


def test_a_chance_series_is_the_dashed_line_of_its_panel(tmp_path):
    log = [{"iteration": i, "split": "test", "identification": 5.0 * i, "identification_chance": 4.0}
           for i in (1, 2, 3)]
    fig = figures.training_curves(log)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["identification"]
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["chance"].get_linestyle() == "--" and list(lines["chance"].get_ydata()) == [4.0] * 3
    assert list(lines["test"].get_ydata()) == [5.0, 10.0, 15.0]


# ------------------------------------------------------------------------------------------------
# A tiny trained system: toytissue at 32 px, random f and G, one VisCoIN iteration.


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_tiny_run):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"), "toytissue")


def test_evaluate_fills_every_design_key(tiny_run):
    trained_only = "faithfulness" not in json.loads((tiny_run / "metrics.json").read_text())
    assert evaluated(tiny_run) is not trained_only
    # n_images defaults to the run's eval_images (8 of the 27 test images)
    result = evaluate(tiny_run, consistency_samples=3, consistency_concepts=1, batch_size=8)
    stored = json.loads((tiny_run / "metrics.json").read_text())
    for key in (*METRIC_KEYS, "factor_alignment", "concept_localisation"):   # toytissue has both truths
        assert key in result and key in stored, key
    assert stored["fid_features"] == "classifier" and stored["lpips_backbone"] == "random"
    assert set(stored["faithfulness"]) == {"0.1", "0.2", "0.4"} == set(stored["faithfulness_random"])
    assert set(stored["sparsity"]) == {"0.2", "0.5", "0.7"}
    assert list(stored["top_n_accuracy"]) == ["2", "4", "6"]
    assert stored["top_n_accuracy"]["6"] == pytest.approx(stored["g_accuracy"])
    assert stored["n_test_images"] == 8
    assert 0 <= stored["identification_in_class"] <= 100 and stored["identification_chance"] == pytest.approx(100 / 8)
    assert set(stored["consistency"]) >= {"mean", "std"}
    assert set(stored["factor_alignment"]["per_factor"]) == set(stored["factor_alignment"]["untrained"]["per_factor"])
    assert evaluated(tiny_run)
    relevance = torch.load(tiny_run / "relevance.pt", weights_only=True)   # what the figures read
    assert relevance["r_kc"].shape == (len(relevance["class_names"]), 6)
    assert len(relevance["images_index"]) == len(relevance["predicted"]) == len(relevance["labels"]) == 8


def test_every_figure_function_runs_on_the_tiny_system(tiny_run, tmp_path):
    from viscoin_core.eval import load_system_and_test_split
    system, test, names = load_system_and_test_split(tiny_run)
    x = torch.stack([test[i][0] for i in range(3)])
    cp = concept_pool(system, x)
    r_kc = class_relevance(concept_relevance(cp.phi, system.theta, cp.predicted), cp.predicted, len(names))
    c = int(cp.predicted[0])
    concepts = figures.select_concepts(r_kc[c], top_k=2)
    fig = figures.concept_grid(system, x, concepts, names[c], out=tmp_path / "grid")
    assert names[c] in fig._suptitle.get_text() and str(concepts) in fig._suptitle.get_text()
    assert len(fig.axes) == 3 * 4
    _written(tmp_path / "grid")
    figures.amplification_strip(system, x[:2], concepts, out=tmp_path / "strip")
    _written(tmp_path / "strip")
    figures.grad_cam_figure(system, x[:2], concepts, out=tmp_path / "cam")
    _written(tmp_path / "cam")
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 4:20, 8:30] = True
    fig = figures.localisation_figure(system, x[:2], concepts[:1] * 2, masks, ["fat", "fat"], [1.0, 1.0],
                                      out=tmp_path / "loc")
    assert len(fig.axes) == 2 * 2 and fig.axes[0].get_title() == f"concept {concepts[0]}, fat"
    assert fig.axes[1].get_title().startswith("localisation ")
    _written(tmp_path / "loc")
    cam = figures.concept_cam(system, x, concepts[0])
    assert cam.shape == (3, 32, 32) and float(cam.max()) <= 1.0 + 1e-6
    cam2 = figures.concept_cam(system, x, concepts[0], layer="layer2")
    assert cam2.shape == (3, 32, 32) and float(cam2.min()) >= 0 and float(cam2.max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="no tap"):
        figures.concept_cam(system, x, concepts[0], layer="layer9")
    # Lambda = 1 is the plain reconstruction.
    phi, phi_prime = system.concepts(x)
    assert torch.allclose(figures.edit_concepts(system, x, concepts, 1.0), system.reconstruct(phi, phi_prime))
    figures.training_curves(tiny_run / "log.jsonl", out=tmp_path / "train")
    fig = figures.runs_compared({"a": tiny_run / "log.jsonl", "b": tiny_run / "log.jsonl"},
                                ["identification_in_class", "mse"], out=tmp_path / "compared")
    ident = fig.axes[0]
    assert [line.get_label() for line in ident.get_lines()] == ["a", "b", "chance"]
    tests = [r for r in read_jsonl(tiny_run / "log.jsonl") if r.get("split") == "test"]
    assert list(ident.get_lines()[0].get_ydata()) == [r["identification_in_class"] for r in tests]
    _written(tmp_path / "compared")
    with pytest.raises(ValueError, match="no test record"):
        figures.runs_compared({"a": tiny_run / "log.jsonl"}, ["nothing"])
    _written(tmp_path / "train")
    fig = figures.reconstruction_pairs(system, x, ["a", "b", "c"], out=tmp_path / "pairs")
    assert len(fig.axes) == 2 * 3 and fig.axes[0].get_title() == "a"
    # the bottom row is the reconstruction of the image above it
    shown = fig.axes[3].get_images()[0].get_array()
    assert np.allclose(shown, figures.to_display(system.reconstruct(phi, phi_prime)[0]), atol=1e-6)
    _written(tmp_path / "pairs")


def test_figures_for_run_writes_the_set(tiny_run, tmp_path):
    if not (tiny_run / "relevance.pt").exists():
        evaluate(tiny_run, n_images=8, consistency_samples=3, consistency_concepts=1, batch_size=8)
    figs = figures.figures_for_run(tiny_run, tmp_path, n_classes_shown=1, n_images=2)
    assert {"relevance_heatmap", "training_curves", "top_n_accuracy", "faithfulness", "factor_alignment",
            "reconstructions"} <= set(figs)
    assert any(name.startswith("concept_grid_") for name in figs)
    for name in figs:
        _written(tmp_path / name)
    # The per-row notebooks ask for PNG only: every figure is there, and no PDF.
    png_only = tmp_path / "png_only"
    again = figures.figures_for_run(tiny_run, png_only, n_classes_shown=1, n_images=2, formats=("png",))
    assert sorted(p.stem for p in png_only.iterdir()) == sorted(again) == sorted(figs)
    assert all(p.suffix == ".png" and p.stat().st_size > 1000 for p in png_only.iterdir())
    with pytest.raises(ValueError, match="'svg'"):
        figures.save_figure(again["faithfulness"], tmp_path / "faith", formats=("svg",))
    with pytest.raises(ValueError, match="'svg'"):   # before it draws anything
        figures.figures_for_run(tiny_run, tmp_path / "never", formats=("png", "svg"))
    assert not (tmp_path / "never").exists()


def _kernel_outputs(cells: list[str], tmp_path) -> list[dict]:
    """Every output of `cells` run top to bottom by papermill in a real IPython kernel (as `make demo` runs notebooks)."""
    import nbformat
    import papermill
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    return [output for cell in executed.cells for output in cell.get("outputs", [])]


@pytest.mark.slow
def test_figures_show_as_images_in_a_kernel_and_progress_bars_as_text(tiny_run, tmp_path):
    # Notebook 06's figures cell, and a cell ending in a figure. No pyplot anywhere: the PNG
    # formatter must come from importing viscoin_core.viz. A widget bar (tqdm.auto) would leave
    # a widget-view output, which reads "model not found" after a page reload.
    if not (tiny_run / "relevance.pt").exists():
        evaluate(tiny_run, n_images=8, consistency_samples=3, consistency_concepts=1, batch_size=8)
    outputs = _kernel_outputs([
        "from IPython.display import display\nfrom viscoin_core.viz import figures\n"
        f"figs = figures.figures_for_run({str(tiny_run)!r}, 'figs', n_classes_shown=1, n_images=2)\n"
        "for fig in figs.values():\n    display(fig)",
        "figs['top_n_accuracy']"], tmp_path)
    shown = [o for o in outputs if o["output_type"] in ("display_data", "execute_result")]
    assert len(shown) >= 7 and shown[-1]["output_type"] == "execute_result"
    for output in shown:
        assert "image/png" in output["data"], output["data"].get("text/plain")
        assert output["data"]["image/png"]                     # base64 of a non-empty PNG
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_no_library_module_uses_a_widget_progress_bar():
    from pathlib import Path
    import viscoin_core
    sources = Path(viscoin_core.__file__).parent.rglob("*.py")
    widget_bars = [str(p) for p in sources if re.search(r"tqdm\.(auto|notebook|autonotebook)\b", p.read_text())]
    assert widget_bars == []


def test_figure_formatter_is_not_registered_outside_ipython():
    from viscoin_core.viz import show_figures_as_images
    assert show_figures_as_images() is False      # pytest is not an IPython kernel
