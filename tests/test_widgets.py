"""The concept explorer, exercised headlessly: moving a slider must change the regenerated image."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from viscoin_core.eval.concepts import system_from_parts
from viscoin_core.nets.classifier import build_classifier
from viscoin_core.nets.stylegan2 import Generator, small_generator_kwargs
from viscoin_core.nets.viscoin import ConceptExtractor, ConceptTranslator, Explainer
from viscoin_core.viz import widgets

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def system():
    torch.manual_seed(0)
    f = build_classifier("resnet18", n_classes=3).eval()
    G = Generator(**small_generator_kwargs(resolution=32)).eval()
    psi = ConceptExtractor(8, f.tap_channels, latent_channels=16).eval()
    omega = ConceptTranslator(8, G.num_ws, G.w_dim, coarse_layer=1, mid_layer=4, w_avg=G.mapping.w_avg).eval()
    return system_from_parts({"f": f, "G": G, "psi": psi, "theta": Explainer(8, 3).eval(), "omega": omega})


@pytest.fixture(scope="module")
def dataset():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ds = TensorDataset(images, torch.tensor([0, 1, 2, 0]))
    ds.class_names = ["a", "b", "c"]
    return ds


def test_unit_scales_reproduce_the_plain_reconstruction(system, dataset):
    x = dataset[0][0][None]
    out = widgets.regenerate(system, x, {0: 1.0, 3: 1.0})
    assert torch.equal(out["x_edit"], out["x_rec"]) and float(out["diff"].max()) == 0.0
    assert torch.isclose(out["probs"].sum(), torch.tensor(1.0))


def test_slider_and_toggle_change_the_image_live(system, dataset):
    box = widgets.concept_explorer(system, dataset, n_concepts=3)
    assert len(box.sliders) == 3 and box.state["index"] == 0
    before = widgets.snapshot(box)
    k = box.state["concepts"][0]
    box.sliders[k].value = 4.0
    amplified = widgets.snapshot(box)
    assert box.state["scales"][k] == 4.0
    assert np.abs(amplified.astype(int) - before.astype(int)).max() > 0
    box.toggles[k].value = False                  # off == lambda 0 for that concept
    off = box.state["x_edit"].clone()
    expected = widgets.regenerate(system, box.state["x"], {**box.state["scales"], k: 0.0})["x_edit"]
    assert torch.equal(off, expected)


def test_picking_another_image_recomputes_its_concepts(system, dataset):
    box = widgets.concept_explorer(system, dataset, n_concepts=2)
    box.picker.value = 2
    assert box.state["index"] == 2
    predicted, chosen = widgets.top_concepts(system, dataset[2][0][None], 2)
    assert box.state["concepts"] == chosen and box.state["predicted"] == predicted
    assert set(box.sliders) == set(chosen)
