"""Official StyleGAN2-ADA network pickles, read without the official code and without running any.

    load_network_pkl(path) -> {'G', 'D', 'G_ema'}   (this package's Generator / Discriminator)

A restricted unpickler answers only an allowlist of globals (persistence, tensor rebuilding,
numpy scalars, containers); anything else raises NetworkPickleError naming it before anything is
called. The networks are then built from the stored constructor arguments with
`viscoin_core.nets.stylegan2`'s classes and their weights loaded strictly.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from viscoin_core.nets.stylegan2 import Discriminator, Generator, _plain, load_weights

# ---------------------------------------------------------------------------------------------
# Official network pickles, read without the official code.
#
# Format (StyleGAN2-ADA `torch_utils/persistence.py`, written with plain pickle.dump): every
# network object pickles as `_reconstruct_persistent_obj(meta)`, meta = {type: 'class', version,
# module_src, class_name, state}, state being the object's __dict__ (`_parameters`, `_buffers`,
# `_modules`, plain attributes, `_init_args`, `_init_kwargs`). Tensors pickle through
# `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` and
# `_rebuild_parameter(data, requires_grad, hooks)`, each storage through
# `torch.storage._load_from_bytes(bytes)` (a legacy torch.save of the storage). Attributes such as
# weight gains are numpy float64 scalars; `_init_kwargs` holds dnnlib EasyDicts; protocol-3
# pickles spell set() as builtins.set.

class NetworkPickleError(ValueError):
    """An official network pickle could not be read safely; the message names the file and the cause."""


class _PersistentStub:
    """What a `torch_utils.persistence` object becomes here: its class name and state, no code."""

    def __init__(self, class_name: str, version: Any, state: dict, stylegan3: bool = False):
        self.class_name = class_name
        self.version = version
        self.state = state
        self.stylegan3 = stylegan3  # only for a helpful error: this package builds StyleGAN2 networks

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _reconstruct_persistent_obj(meta: Any) -> _PersistentStub:
    # `meta['module_src']` (the official source code) is never executed; it is only searched, as
    # text, for StyleGAN3's synthesis input layer to explain why such a pickle cannot be built.
    if not isinstance(meta, Mapping):
        raise NetworkPickleError(f"persistent object meta must be a dict, got {type(meta).__name__}")
    missing = {"type", "class_name", "state"} - set(meta)
    if missing:
        raise NetworkPickleError(f"persistent object meta lacks {sorted(missing)}")
    if meta["type"] != "class":
        raise NetworkPickleError(f"persistent object of type {meta['type']!r}, only 'class' is known")
    class_name, state = meta["class_name"], meta["state"]
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise NetworkPickleError(f"persistent object with class_name {class_name!r}")
    if state is None:
        state = {}
    if not isinstance(state, Mapping):
        raise NetworkPickleError(f"persistent {class_name} has state of type {type(state).__name__}, expected a dict")
    src = meta.get("module_src")
    stylegan3 = isinstance(src, str) and "class SynthesisInput" in src
    return _PersistentStub(class_name, meta.get("version"), dict(state), stylegan3)


class _ModuleStub:
    """Stand-in for a plain torch.nn module class inside a pickle: records the pickled __dict__."""

    torch_class = "torch.nn.Module"

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state):
        if not isinstance(state, Mapping):
            raise NetworkPickleError(f"{self.torch_class} with state of type {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"<plain {self.torch_class}>"


_MODULE_STUBS: dict[str, type] = {}


def _module_stub(qualified_name: str) -> type:
    if qualified_name not in _MODULE_STUBS:
        _MODULE_STUBS[qualified_name] = type(qualified_name.rsplit(".", 1)[1], (_ModuleStub,),
                                             {"torch_class": qualified_name})
    return _MODULE_STUBS[qualified_name]


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (its attribute access is not needed here)."""

    def __setstate__(self, state):
        pass  # EasyDict keeps everything in its items; there is no attribute state to restore


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise NetworkPickleError(f"tensor rebuilt from a {type(storage).__name__}, expected a storage")
    if not (isinstance(storage_offset, int) and all(isinstance(v, int) for v in (*size, *stride))):
        raise NetworkPickleError("tensor rebuilt with a non-integer offset, size or stride")
    if isinstance(storage, torch.TypedStorage):
        with warnings.catch_warnings():  # TypedStorage is deprecated, but it is what the bytes hold
            warnings.simplefilter("ignore", UserWarning)
            dtype, untyped = storage.dtype, storage.untyped()
    else:
        dtype, untyped = torch.uint8, storage
    try:
        # set_ checks that size and stride stay inside the storage
        return torch.empty(0, dtype=dtype).set_(untyped, storage_offset, tuple(size), tuple(stride))
    except RuntimeError as e:
        raise NetworkPickleError(f"tensor does not fit its storage: {e}") from e


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise NetworkPickleError(f"parameter rebuilt from a {type(data).__name__}, expected a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


def _load_storage_bytes(data):
    """Answer `torch.storage._load_from_bytes` with a weights-only torch.load: no code runs."""
    if not isinstance(data, (bytes, bytearray)):
        raise NetworkPickleError(f"tensor storage given as {type(data).__name__}, expected bytes")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise NetworkPickleError(f"tensor storage refused by torch.load(weights_only=True): {e}") from e
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise NetworkPickleError(f"tensor storage bytes held a {type(storage).__name__}, expected a storage")
    return storage


_NUMERIC_KINDS = "biufc"


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise NetworkPickleError(f"numpy.dtype({spec!r}): only dtype names are accepted")
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS:
        raise NetworkPickleError(f"numpy.dtype({spec!r}): only numeric dtypes are accepted")
    return np.dtype(spec, bool(align), bool(copy))


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise NetworkPickleError(f"numpy scalar of dtype {dtype!r}: only numeric dtypes are accepted")
    if isinstance(data, str):
        data = data.encode("latin1")  # how Python 2 era pickles carried the bytes
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise NetworkPickleError(f"numpy scalar of dtype {dtype} with {len(data)} bytes of data")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


# (module, name) -> harmless stand-in. Nothing else may be named by a network pickle.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("builtins", "set"): set,
}
# plain torch.nn module classes (e.g. torch.nn.modules.container.ModuleList) become _ModuleStub
_TORCH_NN_CLASS = re.compile(r"torch\.nn\.modules\.[a-z_][a-z0-9_]*\.[A-Z][A-Za-z0-9_]*")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if _TORCH_NN_CLASS.fullmatch(f"{module}.{name}"):
            return _module_stub(f"{module}.{name}")
        raise NetworkPickleError(
            f"{self.source}: refusing global '{module}.{name}': a network pickle may only name "
            f"persistence, tensor, numpy-scalar and container globals; nothing was executed")

    def persistent_load(self, pid):
        raise NetworkPickleError(f"{self.source}: unexpected persistent id {pid!r} (a torch.save file?)")


def _collect_tensors(obj: Any, prefix: str, out: dict, source: str) -> None:
    """Walk a recovered module tree and gather its state_dict entries (parameters, persistent buffers)."""
    if not isinstance(obj, (_PersistentStub, _ModuleStub)):
        raise NetworkPickleError(f"{source}: sub-module {prefix.rstrip('.')!r} is a {type(obj).__name__}, "
                                 "expected a network object")
    state = obj.state
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, Mapping):
            raise NetworkPickleError(f"{source}: {prefix}{group} is a {type(entries).__name__}, expected a dict")
        for name, tensor in entries.items():
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise NetworkPickleError(f"{source}: {prefix}{name} is a {type(tensor).__name__}, expected a tensor")
            out[prefix + name] = tensor.detach()
    children = state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise NetworkPickleError(f"{source}: {prefix}_modules is a {type(children).__name__}, expected a dict")
    for name, child in children.items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, source)


def _network_from_stub(stub: Any, cls: type, source: str) -> torch.nn.Module:
    """Build `cls` from a recovered persistent object's constructor arguments and fill its weights."""
    if not isinstance(stub, _PersistentStub) or stub.class_name != cls.__name__:
        found = stub.class_name if isinstance(stub, _PersistentStub) else type(stub).__name__
        raise NetworkPickleError(f"{source}: expected a persistent {cls.__name__}, found {found}")
    args = stub.state.get("_init_args", ())
    kwargs = stub.state.get("_init_kwargs", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, Mapping):
        raise NetworkPickleError(f"{source}: constructor arguments missing or malformed")
    args, kwargs = _plain(list(args)), _plain(kwargs)
    if stub.stylegan3:
        raise NetworkPickleError(f"{source}: is a StyleGAN3 {cls.__name__}; only StyleGAN2(-ADA) networks "
                                 "are supported")
    try:
        module = cls(*args, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise NetworkPickleError(f"{source}: cannot build {cls.__name__}(**{kwargs}): {e}") from e
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(stub, "", tensors, source)
    load_weights(module, tensors, source)
    return module.eval().requires_grad_(False)


def load_network_pkl(path: str | Path) -> dict[str, torch.nn.Module]:
    """Read an official StyleGAN2-ADA network pickle without the official code.

    Returns {'G': Generator, 'D': Discriminator, 'G_ema': Generator} with whichever of the three
    the file holds (generator-only pickles have no 'D'), built with this package's classes from
    the stored constructor arguments, weights loaded strictly, in eval mode with requires_grad
    False, on CPU (as the official snapshots are stored; call .requires_grad_(True).train() to
    fine-tune). Other entries (augment_pipe, training_set_kwargs) are read but not returned.
    Embedded source code is never executed; any global outside a small allowlist raises
    NetworkPickleError naming it, before anything is called.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such network pickle")
    if zipfile.is_zipfile(path):
        raise NetworkPickleError(f"{source}: is a zip archive (a torch.save checkpoint?), not an official "
                                 "network pickle; native checkpoints load with load_network/load_generator")
    with open(path, "rb") as f:
        try:
            data = _RestrictedUnpickler(f, source).load()
        except NetworkPickleError:
            raise
        except Exception as e:
            raise NetworkPickleError(f"{source}: not a complete network pickle ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise NetworkPickleError(f"{source}: top level is a {type(data).__name__}, expected a dict with "
                                 "'G', 'D', 'G_ema'")
    nets = {}
    for key, cls in (("G", Generator), ("D", Discriminator), ("G_ema", Generator)):
        if data.get(key) is not None:  # the training loop stores None for modules it did not have
            nets[key] = _network_from_stub(data[key], cls, f"{source}[{key!r}]")
    if "G" not in nets and "G_ema" not in nets:
        raise NetworkPickleError(f"{source}: holds no 'G' or 'G_ema' (keys: {sorted(map(str, data))})")
    return nets
