"""The pretrained stand-ins: float16 export, manifest, and clear errors for every bad file.

The files here are written by the tests in a temporary repository root (pretrained/ under it);
nothing reads the committed pretrained/ directory.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from viscoin_core import pretrained, runs
from viscoin_core.config import ConfigError
from viscoin_core.nets import stylegan2
from viscoin_core.nets.classifier import build_classifier, load_classifier, save_classifier
from viscoin_core.train.classifier import ClassifierConfig, build_f
from viscoin_core.train.gan import GanConfig, start_networks

NAMES = [f"class{i}" for i in range(4)]


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository root whose pretrained/ directory the hints point at."""
    monkeypatch.setattr(runs, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(pretrained, "repo_root", lambda: tmp_path)
    return tmp_path   # pretrained/ itself is made by what writes into it


def small_G(resolution=32):
    torch.manual_seed(0)
    return stylegan2.Generator(**stylegan2.small_generator_kwargs(resolution=resolution, w_dim=16, channel_max=16))


def small_D(resolution=32):
    torch.manual_seed(0)
    return stylegan2.Discriminator(**stylegan2.small_discriminator_kwargs(resolution=resolution, channel_max=16))


def finished_runs(root, monkeypatch):
    """A finished f run and G run as the trainers leave them."""
    dirs = {stage: root / "runs" / "pretrained" / stage / f"{stage}_toybirds" / "seed0" for stage in ("f", "g")}
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"git_commit": "abc123"}))
    torch.manual_seed(0)
    f = build_classifier("resnet10", n_classes=4)
    save_classifier(f.eval(), dirs["f"] / "f.pt", NAMES)
    runs.write_metrics(dirs["f"], {"test_accuracy": 97.5, "best_epoch": 7, "epochs": 30})
    stylegan2.save_generator(small_G(), dirs["g"] / "G.pt")
    stylegan2.save_discriminator(small_D(), dirs["g"] / "D.pt")
    runs.write_metrics(dirs["g"], {"kimg": 100.0, "fid": 12.0, "precision": 0.7, "recall": 0.4})
    for name in ("reals.png", "samples_kimg00100.00.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dirs["g"] / name)
    runs.append_jsonl(dirs["g"] / "log.jsonl", {"event": "snapshot", "kimg": 100.0, "fid": 12.0,
                                                "precision": 0.7, "recall": 0.4, "fid_features": "classifier"})
    monkeypatch.setattr(pretrained, "run_dir", lambda stand_in, stage: dirs[stage])
    return dirs, f


def test_export_writes_float16_weights_that_load_and_agree(root, monkeypatch):
    dirs, f = finished_runs(root, monkeypatch)
    entries = pretrained.export("toybirds")
    pretrained.write_manifest(entries)
    out = root / "pretrained" / "toybirds"
    stored = torch.load(out / "f.pt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert stored["bn1.num_batches_tracked"].dtype == torch.int64     # integers stay integers
    g = load_classifier(out / "f.pt")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(g(x), f(x), atol=2e-2)
    assert g.class_names == NAMES
    G = stylegan2.load_generator(out / "G.pt")
    z = torch.randn(2, G.z_dim)
    assert torch.allclose(G(z, None, noise_mode="const"), small_G()(z, None, noise_mode="const"), atol=2e-2)
    # The files are about half their float32 size, and the manifest describes each one.
    assert (out / "f.pt").stat().st_size < 0.6 * (dirs["f"] / "f.pt").stat().st_size
    manifest = json.loads((root / "pretrained" / "MANIFEST.json").read_text())
    assert set(manifest) == {"toybirds/f.pt", "toybirds/G.pt", "toybirds/D.pt"}
    for name, entry in manifest.items():
        assert entry["sha256"] == pretrained.sha256(root / "pretrained" / name)
        assert entry["bytes"] == (root / "pretrained" / name).stat().st_size
        assert entry["commit"] == "abc123" and "make pretrained" in entry["made_by"]
    assert manifest["toybirds/f.pt"]["metrics"]["test_accuracy"] == 97.5
    assert manifest["toybirds/G.pt"]["budget"] == {"kimg": 100.0}
    assert (out / "samples.png").exists()   # the G's samples beside its training images


def test_the_manifest_refuses_weights_over_the_budget(root, monkeypatch):
    monkeypatch.setattr(pretrained, "BUDGET_BYTES", 1000)
    with pytest.raises(ConfigError, match="over the 0 MB budget"):
        pretrained.write_manifest({"toybirds/f.pt": {"bytes": 2000}})


def f_config(path, arch="resnet10"):
    return ClassifierConfig(data="d.yaml", arch=arch, pretrained=False, init_from=str(path))


def write_f(path, arch="resnet10", n_classes=4):
    save_classifier(build_classifier(arch, n_classes=n_classes), path, NAMES[:n_classes])


def pretrained_dir(root):
    out = root / "pretrained" / "toybirds"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_a_missing_pretrained_f_names_the_file_and_make_pretrained(root):
    path = pretrained_dir(root) / "f.pt"
    with pytest.raises(ConfigError, match="make pretrained") as err:
        build_f(f_config(path), 4, NAMES)
    assert str(path) in str(err.value)


def test_a_truncated_pretrained_f_is_refused_by_name(root):
    path = pretrained_dir(root) / "f.pt"
    write_f(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="make pretrained") as err:
        build_f(f_config(path), 4, NAMES)
    assert str(path) in str(err.value) and "not a readable torch file" in str(err.value)


def test_a_pretrained_f_of_another_architecture_is_refused(root):
    path = pretrained_dir(root) / "f.pt"
    write_f(path, arch="resnet18")
    with pytest.raises(ConfigError, match=r"holds a resnet18, but 'arch' = 'resnet10'.*make pretrained"):
        build_f(f_config(path), 4, NAMES)


def test_a_pretrained_file_that_is_not_weights_only_is_never_unpickled(root):
    path = pretrained_dir(root) / "f.pt"
    torch.save({"kwargs": argparse.Namespace(arch="resnet10"), "state_dict": {}}, path)
    with pytest.raises(ConfigError, match="weights_only.*make pretrained") as err:
        build_f(f_config(path), 4, NAMES)
    assert str(path) in str(err.value)


def test_an_f_outside_pretrained_gets_no_rebuild_hint(tmp_path, root):
    path = tmp_path / "elsewhere.pt"
    write_f(path, arch="resnet18")
    with pytest.raises(ConfigError) as err:
        build_f(f_config(path), 4, NAMES)
    assert "make pretrained" not in str(err.value)


def g_config(start):
    return GanConfig(data="d.yaml", start=str(start), arch="small", w_dim=16, channel_max=16, kimg=1, fid_images=0)


def test_a_pretrained_G_of_another_resolution_is_refused(root):
    out = pretrained_dir(root)
    stylegan2.save_generator(small_G(16), out / "G.pt")
    stylegan2.save_discriminator(small_D(16), out / "D.pt")
    with pytest.raises(ConfigError, match=r"16 px.*32 px.*make pretrained"):
        start_networks(g_config(out), resolution=32)


def test_a_truncated_or_missing_pretrained_G_is_refused_by_name(root):
    out = pretrained_dir(root)
    with pytest.raises(ConfigError, match="make pretrained"):
        start_networks(g_config(out / "G.pt"), resolution=32)
    stylegan2.save_generator(small_G(), out / "G.pt")
    (out / "G.pt").write_bytes((out / "G.pt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="make pretrained") as err:
        start_networks(g_config(out), resolution=32)
    assert "G.pt" in str(err.value)


def test_a_good_pretrained_G_and_D_start_a_run(root):
    out = pretrained_dir(root)
    stylegan2.save_generator(small_G(), out / "G.pt")
    stylegan2.save_discriminator(small_D(), out / "D.pt")
    G, D, G_ema = start_networks(g_config(out), resolution=32)
    reference = small_G().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in G.state_dict().items())
    assert D.img_resolution == 32 and G_ema.img_resolution == 32


@pytest.mark.parametrize("stage", ["f", "g"])
def test_each_stand_in_sets_its_own_budget_rather_than_inheriting_one(stage):
    """gan_toytissue.yaml extends gan_toybirds.yaml: raising the bird G's kimg once began retraining
    the tissue G too. Each file names its own budget, so one can grow without the other."""
    import yaml
    key = "epochs" if stage == "f" else "kimg"
    for stand_in in pretrained.STAND_INS:
        own = yaml.safe_load(pretrained.params_file(stand_in, stage).read_text())
        assert key in own, f"{pretrained.params_file(stand_in, stage)} inherits {key!r}"
