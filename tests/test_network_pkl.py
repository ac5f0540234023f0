"""Official network pickles (viscoin_core.nets.network_pkl) and native checkpoints (viscoin_core.nets.stylegan2).

The pickles here are made the way StyleGAN2-ADA makes them: network objects reduce to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, their state is the module __dict__
with `_init_args`/`_init_kwargs`, constructor kwargs are dnnlib EasyDicts, gains are numpy
float64 scalars, tensors go through plain pickle.dump. Stand-in `torch_utils` and `dnnlib`
modules exist only while writing; they are removed before loading, so the loader is shown to
work without them.
"""

from __future__ import annotations

import copy
import pickle
import pickletools
import sys
import zipfile

import pytest
import torch

from viscoin_core.nets.network_pkl import NetworkPickleError, load_network_pkl
from viscoin_core.nets.network_pkl_writer import write_network_pkl
from viscoin_core.nets.stylegan2 import (
    Discriminator,
    Generator,
    load_discriminator,
    load_generator,
    load_network,
    load_weights,
    save_discriminator,
    save_generator,
    small_discriminator_kwargs,
    small_generator_kwargs,
)

G_KWARGS = small_generator_kwargs(resolution=16, w_dim=16, channel_base=128, channel_max=16)
D_KWARGS = small_discriminator_kwargs(resolution=16, channel_base=128, channel_max=16, mbstd_group_size=2)


# ---------------------------------------------------------------------------------------------
# Writing pickles in the official persistence form (viscoin_core.nets.network_pkl_writer).

class AugmentPipe(torch.nn.Module):
    """Shaped like the official augment pipe: a probability buffer, filter banks, float attributes."""

    def __init__(self):
        super().__init__()
        self.register_buffer("p", torch.zeros([]))
        self.register_buffer("Hz_geom", torch.randn(12))
        self.xflip = 1.0
        self.extra = torch.nn.ModuleList([torch.nn.Linear(2, 2)])  # a plain torch.nn child


def write_official_pickle(path, nets: dict, protocol=3, module_src="raise SystemExit('module_src executed')\n",
                          with_extras=True):
    """Write {'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} like training_loop.py does."""
    extras = {"augment_pipe": (AugmentPipe(), dict(xflip=1)),
              "training_set_kwargs": dict(class_name="training.dataset.ImageFolderDataset", path="birds.zip",
                                          resolution=16, use_labels=False)} if with_extras else {}
    write_network_pkl(path, nets, extras, protocol=protocol, module_src=module_src)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules


def globals_named(path) -> set[str]:
    """'module.name' of every GLOBAL opcode (protocols <= 3 spell them out)."""
    names = set()
    for op, arg, _ in pickletools.genops(open(path, "rb").read()):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


@pytest.fixture()
def nets():
    G, D, G_ema = Generator(**G_KWARGS), Discriminator(**D_KWARGS), Generator(**G_KWARGS)
    with torch.no_grad():
        for p in G_ema.parameters():
            p.add_(0.1 * torch.randn_like(p))  # G_ema must come back with its own weights
        for layer in G.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.3)
        G.mapping.w_avg.normal_()
    return {"G": G, "D": D, "G_ema": G_ema}


def same_outputs(a, b, kind):
    torch.manual_seed(1)
    if kind == "D":
        img = torch.randn(4, 3, 16, 16)
        return torch.allclose(a(img, None), b(img, None), atol=1e-6)
    z = torch.randn(2, a.z_dim)
    return torch.allclose(a(z, None, truncation_psi=0.7, noise_mode="const"),
                          b(z, None, truncation_psi=0.7, noise_mode="const"), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Round trips.

@pytest.mark.parametrize("protocol", [3, 4])
def test_official_pickle_round_trip(tmp_path, nets, protocol):
    path = tmp_path / "network-snapshot.pkl"
    sentinel = tmp_path / "module_src_ran"
    write_official_pickle(path, {k: v.eval() for k, v in nets.items()}, protocol=protocol,
                          module_src=f"open({str(sentinel)!r}, 'w').close()\n")
    if protocol == 3:  # the format's globals really occur, so each mapping is exercised
        assert {"torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_tensor_v2",
                "torch._utils._rebuild_parameter", "torch.storage._load_from_bytes", "collections.OrderedDict",
                "dnnlib.util.EasyDict", "numpy.dtype", "builtins.set",
                "torch.nn.modules.container.ModuleList"} <= globals_named(path)
        assert any(n.endswith("multiarray.scalar") for n in globals_named(path))

    loaded = load_network_pkl(path)

    assert set(loaded) == {"G", "D", "G_ema"}
    assert not sentinel.exists()
    for key, net in loaded.items():
        kind = "D" if key == "D" else "G"
        assert type(net) is (Discriminator if kind == "D" else Generator)
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        for name, tensor in nets[key].state_dict().items():
            assert torch.equal(net.state_dict()[name], tensor), name
        assert same_outputs(net, nets[key].eval(), kind)
    assert not torch.equal(loaded["G"].mapping.fc0.weight, loaded["G_ema"].mapping.fc0.weight)
    assert loaded["G"].init_kwargs == G_KWARGS


def test_generator_only_pickle(tmp_path, nets):
    path = tmp_path / "g.pkl"
    write_official_pickle(path, {"G_ema": nets["G_ema"], "D": None, "augment_pipe": None}, with_extras=False)
    loaded = load_network_pkl(path)
    assert set(loaded) == {"G_ema"}
    assert same_outputs(load_generator(path), nets["G_ema"].eval(), "G")
    with pytest.raises(NetworkPickleError, match="no 'D'"):
        load_discriminator(path)


def test_conditional_networks_load(tmp_path):
    G = Generator(**small_generator_kwargs(resolution=16, w_dim=16, channel_base=128, channel_max=16, c_dim=5))
    D = Discriminator(**small_discriminator_kwargs(resolution=16, channel_base=128, channel_max=16, c_dim=5,
                                                   mbstd_group_size=2))
    path = tmp_path / "cond.pkl"
    write_official_pickle(path, {"G": G, "D": D, "G_ema": G})
    loaded = load_network_pkl(path)
    assert "mapping.embed.weight" in loaded["D"].state_dict()
    c = torch.eye(5)[:2]
    z = torch.randn(2, 16)
    assert torch.allclose(loaded["G"](z, c, noise_mode="const"), G.eval()(z, c, noise_mode="const"), atol=1e-6)
    img = torch.randn(2, 3, 16, 16)
    assert torch.allclose(loaded["D"](img, c), D(img, c), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Hostile and broken files: clear errors, nothing executed.

def test_not_a_pickle(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(NetworkPickleError, match="notes.pkl"):
        load_network_pkl(path)


def test_truncated_pickle(tmp_path, nets):
    path = tmp_path / "full.pkl"
    write_official_pickle(path, nets)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NetworkPickleError, match="cut.pkl.*not a complete network pickle"):
        load_network_pkl(cut)


def test_os_system_is_refused_and_not_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # protocol 0 by hand: os.system("touch <sentinel>")
    path.write_bytes(b"cos\nsystem\n(V" + f"touch {sentinel}".encode() + b"\ntR.")
    with pytest.raises(NetworkPickleError, match=r"'os\.system'"):
        load_network_pkl(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("target", [("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                                    ("torch", "load"), ("numpy", "load")])
def test_foreign_globals_refused(tmp_path, target):
    module, name = target
    path = tmp_path / "foreign.pkl"
    # protocol 4 STACK_GLOBAL, nested inside an otherwise harmless dict
    body = (b"\x80\x04}\x8c\x01G\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
            + name.encode() + b"\x93\x8c\x04argsq\x00\x85R\x73.")
    path.write_bytes(body)
    with pytest.raises(NetworkPickleError, match=f"'{module}.{name}'"):
        load_network_pkl(path)


def test_malicious_storage_bytes_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    inner = b"cos\nsystem\n(V" + f"touch {sentinel}".encode() + b"\ntR."
    path = tmp_path / "storage.pkl"
    path.write_bytes(b"\x80\x03ctorch.storage\n_load_from_bytes\nC" + bytes([len(inner)]) + inner + b"\x85R.")
    with pytest.raises(NetworkPickleError, match="weights_only"):
        load_network_pkl(path)
    assert not sentinel.exists()


def test_torch_save_file_is_not_a_network_pickle(tmp_path):
    path = tmp_path / "ckpt.pkl"
    torch.save({"G": {}}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(NetworkPickleError, match="zip archive"):
        load_network_pkl(path)


def test_wrong_top_level_and_wrong_class(tmp_path, nets):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(NetworkPickleError, match="top level is a list"):
        load_network_pkl(path)
    swapped = tmp_path / "swapped.pkl"
    write_official_pickle(swapped, {"G": nets["D"]}, with_extras=False)
    with pytest.raises(NetworkPickleError, match="expected a persistent Generator, found Discriminator"):
        load_network_pkl(swapped)


def test_stylegan3_pickle_is_named(tmp_path, nets):
    path = tmp_path / "sg3.pkl"
    write_official_pickle(path, {"G_ema": nets["G"]}, with_extras=False,
                          module_src="class SynthesisInput(torch.nn.Module):\n    pass\n")
    with pytest.raises(NetworkPickleError, match="StyleGAN3"):
        load_network_pkl(path)


def test_weights_of_another_resolution(tmp_path):
    G32 = Generator(**small_generator_kwargs(resolution=32, w_dim=16, channel_base=256, channel_max=16))
    G16 = Generator(**small_generator_kwargs(resolution=16, w_dim=16, channel_base=256, channel_max=16))
    with pytest.raises(ValueError, match="weights are for a 32 px network, expected 16 px"):
        load_weights(G16, G32.state_dict())
    # a pickle whose constructor arguments say 16 px but whose tensors are 32 px
    G32.init_kwargs = copy.deepcopy(G16.init_kwargs)
    path = tmp_path / "mixed.pkl"
    write_official_pickle(path, {"G_ema": G32}, with_extras=False)
    with pytest.raises(ValueError, match=r"mixed\.pkl.*32 px network, expected 16 px"):
        load_network_pkl(path)


# ---------------------------------------------------------------------------------------------
# Native checkpoints.

def test_native_round_trip(tmp_path, nets):
    g_path, d_path = tmp_path / "G.pt", tmp_path / "D.pt"
    save_generator(nets["G"], g_path)
    save_discriminator(nets["D"], d_path)
    raw = torch.load(g_path, weights_only=True)  # plain data only
    assert raw["kwargs"] == G_KWARGS and raw["class_name"] == "Generator"
    G, D = load_generator(g_path), load_discriminator(d_path)
    assert same_outputs(G, nets["G"].eval(), "G") and same_outputs(D, nets["D"].eval(), "D")
    assert torch.equal(G.mapping.w_avg, nets["G"].mapping.w_avg)
    assert isinstance(load_network(d_path), Discriminator)
    with pytest.raises(ValueError, match="holds a Discriminator, expected a Generator"):
        load_generator(d_path)
    with pytest.raises(TypeError):
        save_generator(nets["D"], tmp_path / "x.pt")


def test_native_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="junk.pt"):
        load_generator(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="expected a native StyleGAN2 checkpoint"):
        load_network(other)
    G = Generator(**G_KWARGS)
    path = tmp_path / "G.pt"
    save_generator(G, path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["kwargs"]["img_resolution"] = 32
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="16 px network, expected 32 px"):
        load_generator(path)
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.pt")


def test_pickle_with_converted_tf_kwargs(tmp_path):
    """Pickles converted from TensorFlow spell out every optional constructor argument."""
    G = Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2, embed_features=None, layer_features=None, activation="lrelu",
                                      lr_multiplier=0.01, w_avg_beta=0.995),
                  synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None,
                                        architecture="skip", resample_filter=[1, 3, 3, 1], use_noise=True,
                                        activation="lrelu"))
    D = Discriminator(c_dim=2, img_resolution=16, img_channels=3, architecture="resnet", channel_base=128,
                      channel_max=16, num_fp16_res=0, conv_clamp=None, cmap_dim=None,
                      block_kwargs=dict(activation="lrelu", resample_filter=[1, 3, 3, 1], freeze_layers=0),
                      mapping_kwargs=dict(num_layers=0, embed_features=None, layer_features=None,
                                          activation="lrelu", lr_multiplier=0.1),
                      epilogue_kwargs=dict(mbstd_group_size=None, mbstd_num_channels=1, activation="lrelu"))
    path = tmp_path / "converted.pkl"
    write_official_pickle(path, {"G": G, "D": D, "G_ema": G})
    loaded = load_network_pkl(path)
    c = torch.eye(2)[[0, 1, 1]]
    z = torch.randn(3, 8)
    img = loaded["G_ema"](z, c, noise_mode="const")
    assert torch.allclose(img, G.eval()(z, c, noise_mode="const"), atol=1e-6)
    assert torch.allclose(loaded["D"](img, c), D.eval()(img, c), atol=1e-6)  # mbstd over the whole batch of 3
