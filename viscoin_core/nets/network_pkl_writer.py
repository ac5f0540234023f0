"""Writing networks in StyleGAN2-ADA's official pickle format, for rehearsals and tests.

The official `training_loop.py` pickles a dict {'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}. Each network is a `torch_utils.persistence` object: it pickles as
`_reconstruct_persistent_obj(meta)`, where meta holds the class name, the module's source as text,
and its state (the module `__dict__` with `_init_args` / `_init_kwargs`). Constructor kwargs are
`dnnlib.util.EasyDict`s and float gains are numpy float64 scalars. To name those globals, stand-in
`torch_utils` and `dnnlib` modules exist only while the file is written. `module_src` is a harmless
placeholder here: the reader never executes it.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

PLACEHOLDER_SRC = "# written by viscoin_core.nets.network_pkl_writer: not the official source\n"


@contextlib.contextmanager
def official_modules() -> Iterator[dict[str, types.ModuleType]]:
    """Provide `torch_utils.persistence` and `dnnlib.util` for pickle to name, then remove them."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}

    def _reconstruct_persistent_obj(meta):  # only its name matters: it is what the pickle refers to
        raise AssertionError("never called while writing")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    mods["dnnlib.util"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Persistent:
    """Pickles exactly like a persistence-decorated object: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, meta: dict):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def easydict(mods: dict, value: Any) -> Any:
    """Nested dicts as dnnlib EasyDicts, as the official kwargs are."""
    if isinstance(value, dict):
        return mods["dnnlib.util"].EasyDict({k: easydict(mods, v) for k, v in value.items()})
    return value


def as_persistent(mods: dict, module: torch.nn.Module, init_kwargs: dict | None = None,
                  module_src: str = PLACEHOLDER_SRC) -> Persistent:
    """The official pickled form of `module`: a persistent object whose state is its __dict__."""
    state = dict(module.__dict__)
    state.pop("init_kwargs", None)  # this package's own attribute, absent from official objects
    for key, value in state.items():
        if isinstance(value, float):
            state[key] = np.float64(value)  # official gains come from np.sqrt
    state["_parameters"] = OrderedDict(state["_parameters"])
    state["_buffers"] = OrderedDict(state["_buffers"])
    state["_modules"] = OrderedDict(
        (name, child if not isinstance(child, torch.nn.Module) or type(child).__module__.startswith("torch.")
         else as_persistent(mods, child, {}, module_src))
        for name, child in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = {k: easydict(mods, v) for k, v in (init_kwargs or {}).items()}  # **kwargs: a dict
    meta = dict(type="class", version=6, module_src=module_src, class_name=type(module).__name__, state=state)
    return Persistent(mods["torch_utils.persistence"]._reconstruct_persistent_obj, meta)


def write_network_pkl(path: str | Path, nets: dict[str, torch.nn.Module | None], extras: dict | None = None,
                      protocol: int = 3, module_src: str = PLACEHOLDER_SRC) -> Path:
    """Write `nets` ({'G', 'D', 'G_ema'}: this package's networks, built with their official kwargs)
    and `extras` (more top-level entries: `extras[name] = (module, init_kwargs)` for a persistent
    module such as an augment pipe, or a plain dict for `training_set_kwargs`) as an official pickle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with official_modules() as mods:
        data = {key: None if net is None else as_persistent(mods, net, net.init_kwargs, module_src)
                for key, net in nets.items()}
        for key, value in (extras or {}).items():
            data[key] = (as_persistent(mods, value[0], value[1], module_src) if isinstance(value, tuple)
                         else easydict(mods, value))
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=protocol)
    tmp.replace(path)
    return path
