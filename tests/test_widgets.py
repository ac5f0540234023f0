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


def _pooled(system, x):
    """maxpool(phi_k(x)) computed here, independently of the explorer."""
    return system.concepts(x)[0].amax(dim=(2, 3))[0]


def test_explorer_offers_only_concepts_active_on_the_image(system, dataset):
    box = widgets.concept_explorer(system, dataset, n_concepts=8)   # ask for all K = 8
    active = {k for k, v in enumerate(_pooled(system, dataset[0][0][None]).tolist()) if v > 0}
    assert 0 < len(active) < 8                      # the fixture has inactive concepts to leave out
    assert set(box.state["concepts"]) == active and set(box.sliders) == active


def test_ties_are_broken_by_activation_then_index(system, dataset):
    # Hand-set phi and W: concepts 2, 4, 5 tie at alpha = 0.2; 7 is active with alpha 0;
    # 0, 1, 3, 6 have large weights but are inactive (phi = 0), so they must never be offered.
    import dataclasses
    pooled = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.2, 0.4, 0.0, 0.9])
    phi = torch.zeros(1, 8, 3, 3)
    phi[0, :, 1, 2] = pooled
    theta = Explainer(8, 3).eval()
    with torch.no_grad():
        theta.linear.weight.zero_()
        theta.linear.weight[0] = torch.tensor([5.0, 5.0, 0.4, 5.0, 1.0, 0.5, 5.0, 0.0])
        theta.linear.bias.copy_(torch.tensor([0.0, -1.0, -1.0]))
    stub = dataclasses.replace(system, psi=lambda taps: (phi, torch.zeros(1, 72)), theta=theta)
    x = dataset[0][0][None]
    assert widgets.top_concepts(stub, x, 6) == (0, [2, 5, 4, 7])
    assert widgets.top_concepts(stub, x, 2) == (0, [2, 5])


def test_labels_are_whole_and_a_switched_off_concept_reads_off(system, dataset):
    box = widgets.concept_explorer(system, dataset, n_concepts=3)
    for k in box.state["concepts"]:
        assert box.sliders[k].description == f"concept {k}"
        # not cut to ipywidgets' ~80 px: as wide as the longest label, plus one character
        assert box.sliders[k].style.description_width == f"{len(f'concept {max(box.sliders)}') + 1}ch"
        assert box.toggles[k].description == f"concept {k}: on"
    k = box.state["concepts"][0]
    box.toggles[k].value = False
    assert box.toggles[k].description == f"concept {k}: off" and box.state["scales"][k] == 0.0
    box.toggles[k].value = True
    assert box.toggles[k].description == f"concept {k}: on"


def test_probability_bars_keep_long_class_names_whole():
    names = ["001.Blue_Plain_Crested_Shorttail_Blackbill", "002.Blue_Spotted_Plainhead_Longtail_Blackbill"]
    bars = widgets.probability_bars(torch.tensor([0.3, 0.7]), names)
    assert all(name in bars for name in names)
    assert bars.index(names[1]) < bars.index(names[0])              # most probable first


def test_an_image_with_no_active_concept_gets_no_rows_and_says_so(system, dataset):
    import dataclasses
    silent = dataclasses.replace(system, psi=lambda taps: (torch.zeros(1, 8, 3, 3), torch.zeros(1, 72)))
    box = widgets.concept_explorer(silent, dataset, n_concepts=4)
    assert box.state["concepts"] == [] and box.sliders == {} and box.toggles == {}
    assert box.children[2].children == ()
    assert "no concept is active" in box.children[0].children[1].value
