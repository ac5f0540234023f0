"""Fault injection (issue 15): a fault costs at most the work since the last checkpoint, and says so in one line.

- SIGKILL inside checkpoint, snapshot and final writes of each trainer (f, G, VisCoIN), in a forked
  child process at chosen and at seeded random points; the resumed run is bit-identical to an
  uninterrupted one, its log has no duplicate line and its metrics.json is the same.
- Disk full on run directories and caches: a patched write that raises ENOSPC, and a real 1 MB
  tmpfs where `mount` works (skipped elsewhere).
- NaN/inf in a loss, in parameters (a poisoned optimiser step) and in checkpoint files.
- The odd-image set (truncated, zero-byte, misnamed, CMYK, L, LA, RGBA, P, 16-bit, huge, one pixel)
  and classes with too few images.
- Config mistakes from every command line: one 'error:' line, exit code 2, no traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tqdm.auto import tqdm

from viscoin_core import cli, model, runs
from viscoin_core.config import ConfigError, parse_config, to_dict
from viscoin_core.data import DataError, ensure_prepared, load_split, read_manifest
from viscoin_core.data import prepare as P
from viscoin_core.nets.classifier import build_classifier, save_classifier
from viscoin_core.train import classifier as C
from viscoin_core.train import gan
from viscoin_core.train import loop
from viscoin_core.train import viscoin as V

from test_gan import tiny_config as gan_tiny_config     # the tiny networks the other suites use
from test_viscoin_train import tiny as viscoin_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
CHILD_ENV.pop("VISCOIN_DEBUG", None)
PICK = random.Random(1015)   # the "random" kill points: seeded, so a failure names a point that repeats


def die_in(train, target: str, nth: int, where: str) -> None:
    """Run `train()` in a forked child that is SIGKILLed at the nth write of the file named `target`:
    'start' before a byte is written, 'mid' with half a temporary file on disk, 'before_rename' with
    the whole temporary file written but not renamed, 'after' once the file is in place. Asserts that
    the child died so.

    Forked (not a fresh interpreter) so as not to pay torch's import per kill; the kill itself is real.
    """
    def dying_child() -> None:
        real, seen = runs.write_bytes_atomic, {"n": 0}

        def dying(path, data):
            path = Path(path)
            if path.name == target:
                seen["n"] += 1
                if seen["n"] == nth:
                    tmp = path.with_name(path.name + ".tmp")
                    if where == "mid":
                        tmp.write_bytes(bytes(data)[: len(data) // 2])
                    elif where == "before_rename":
                        tmp.write_bytes(bytes(data))
                    elif where == "after":
                        real(path, data)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)

        runs.write_bytes_atomic = dying
        train()
        os._exit(0)          # reached only when the kill point never came

    child = multiprocessing.get_context("fork").Process(target=dying_child)
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL, (target, nth, where, child.exitcode)


@pytest.fixture(autouse=True)
def quiet_bars(monkeypatch):
    """No progress bars in this module's runs: its assertions read stderr line by line."""
    for module in (V, C, gan, P):
        monkeypatch.setattr(module, "tqdm", functools.partial(tqdm, disable=True))


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "second" not in k} for r in records]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.tmp")], list(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 32 px toybirds cache (12 classes, 2 images each per split) and its data parameter file."""
    root = tmp_path_factory.mktemp("toybirds")
    params = root / "data.yaml"
    params.write_text(json.dumps({"dataset": "toybirds", "root": str(root / "raw"), "cache_dir": str(root / "cache"),
                                  "resolution": 32, "n_per_class": 2}))
    return {"yaml": str(params), "cache_dir": str(ensure_prepared(str(params)))}


# ============================================================================= SIGKILL and resume

def viscoin_config(data, **kw):
    """test_viscoin_train's tiny run: 3 iterations, a checkpoint after each, a test line at 2."""
    return viscoin_tiny(data["cache_dir"], **{"iterations": 3, "checkpoint_every": 1, "log_every": 1,
                                              "eval_every": 2, "final_eval_images": 2, **kw})


@pytest.fixture(scope="module")
def viscoin_reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("viscoin_reference")
    return run, V.train_viscoin(viscoin_config(data), run)


def assert_same_viscoin(reference: Path, metrics: dict, run: Path) -> None:
    a = torch.load(reference / V.FINAL, weights_only=True)
    b = torch.load(run / V.FINAL, weights_only=True)
    for part in ("psi", "theta", "omega"):
        assert same_tensors(a[part], b[part]), part
    assert runs.read_metrics(run) == metrics
    assert strip_time(runs.read_jsonl(run / "log.jsonl")) == strip_time(runs.read_jsonl(reference / "log.jsonl"))
    assert_no_temporaries(run)


def random_point(files: dict[str, int]) -> tuple[str, int, str]:
    """A seeded random (file, nth write of it, where in the write) among `files` (name -> writes in a run)."""
    target = PICK.choice(sorted(files))
    return target, PICK.randint(1, files[target]), PICK.choice(["start", "mid", "before_rename"])


@pytest.mark.parametrize("target, nth, where", [
    ("checkpoint.pt", 1, "start"),          # log lines written, no checkpoint yet: the log must not keep them twice
    ("metrics.json", 1, "before_rename"),   # the final evaluation logged, metrics not: it must not be logged twice
    random_point({"checkpoint.pt": 3, V.FINAL: 1}),
])
def test_viscoin_killed_resumes_bit_identical(data, viscoin_reference, tmp_path, target, nth, where):
    reference, metrics = viscoin_reference
    cfg = viscoin_config(data)
    run = tmp_path / "run"
    die_in(lambda: V.train_viscoin(cfg, run), target, nth, where)
    if target == "checkpoint.pt":       # nothing finished was lost: the last whole checkpoint is there
        expected = nth - 1
        ckpt = runs.load_checkpoint(run)
        assert (ckpt is None and expected == 0) or ckpt["iteration"] == expected
    assert V.train_viscoin(cfg, run) == metrics
    assert_same_viscoin(reference, metrics, run)


def classifier_config(data, **kw) -> C.ClassifierConfig:
    params = dict(data=data["yaml"], arch="resnet18", pretrained=False, epochs=3, batch_size=8, lr=1e-3, val_fraction=0.2,
                  eval_batch_size=64, log_every=1, device="cpu")
    params.update(kw)
    return parse_config(C.ClassifierConfig, params)


def test_classifier_killed_in_checkpoint_and_final_writes_resumes_bit_identical(data, tmp_path):
    cfg = classifier_config(data, epochs=2)
    reference = C.train_classifier(cfg, tmp_path / "whole")
    for name, (target, nth, where) in {"ckpt": ("checkpoint.pt", 2, "before_rename"),
                                       "random": random_point({"f.pt": 1, "best.pt": 1, "metrics.json": 1})}.items():
        run = tmp_path / name
        die_in(lambda: C.train_classifier(cfg, run), target, nth, where)
        if target == "checkpoint.pt":
            assert runs.load_checkpoint(run)["epoch"] == 0      # epoch 1's checkpoint survived
        assert C.train_classifier(cfg, run) == reference, (target, nth, where)
        a = torch.load(tmp_path / "whole" / "f.pt", weights_only=True)["state_dict"]
        b = torch.load(run / "f.pt", weights_only=True)["state_dict"]
        assert same_tensors(a, b)
        assert strip_time(runs.read_jsonl(run / "log.jsonl")) == strip_time(runs.read_jsonl(tmp_path / "whole" / "log.jsonl"))
        assert_no_temporaries(run)


@pytest.fixture(scope="module")
def gan_setup(data, tmp_path_factory):
    """A GAN config with FID at every snapshot (a random f's features) and its uninterrupted run."""
    folder = tmp_path_factory.mktemp("gan")
    save_classifier(build_classifier("resnet18", n_classes=12), folder / "f.pt")
    cfg = gan_tiny_config(data=data["yaml"], fid_images=8, fid_classifier=str(folder / "f.pt"), device="cpu")
    metrics = gan.train_gan(cfg, folder / "reference")
    return cfg, folder / "reference", metrics


@pytest.mark.parametrize("target, nth, where", [
    ("checkpoint.pt", 3, "after"),     # right after the last snapshot's checkpoint (the issue: a stale fid)
    ("checkpoint.pt", 1, "after"),     # right after the kimg-0 snapshot's (the issue: a wrong fid_start)
    ("checkpoint.pt", 2, "start"),     # a snapshot's FID line written, its checkpoint not
    random_point({"checkpoint.pt": 3, "G.pt": 1, "D.pt": 1, "metrics.json": 1}),
])
def test_gan_killed_in_snapshot_reports_the_right_fid(gan_setup, tmp_path, target, nth, where):
    cfg, reference, metrics = gan_setup
    run = tmp_path / "run"
    die_in(lambda: gan.train_gan(cfg, run), target, nth, where)
    resumed = gan.train_gan(cfg, run)
    timeless = lambda m: {k: v for k, v in m.items() if k != "kimg_per_hour"}
    assert timeless(resumed) == timeless(metrics)
    assert resumed["fid"] != resumed["fid_start"]
    a = torch.load(reference / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    for net in ("G", "D", "G_ema"):
        assert same_tensors(a[net], b[net]), net
    assert strip_time(runs.read_jsonl(run / "log.jsonl")) == strip_time(runs.read_jsonl(reference / "log.jsonl"))
    assert_no_temporaries(run)


# ============================================================================= disk full

class FillingFile:
    """A file that takes `room` bytes and then raises ENOSPC, as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def full_disk(module, monkeypatch, room: int = 1000) -> None:
    """Make `module`'s writes through open(..., 'w...') fill up after `room` bytes."""
    def opener(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return FillingFile(handle, room) if "w" in mode else handle
    monkeypatch.setattr(module, "open", opener, raising=False)


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runs.save_atomic({"w": torch.zeros(10)}, path)
    before = path.read_bytes()
    full_disk(runs, monkeypatch)
    with pytest.raises(runs.NoSpaceLeft, match=rf"^no space left on device: {path} needs 3\.8 MB.*previous content is kept"):
        runs.save_atomic({"w": torch.zeros(1_000_000)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    with pytest.raises(runs.NoSpaceLeft, match="metrics.json needs .*nothing was written"):
        runs.write_metrics(tmp_path, {"x": "y" * 5000})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_training_on_a_full_disk_stops_with_one_line(data, tmp_path, monkeypatch, capsys):
    params = tmp_path / "v.yaml"
    params.write_text(json.dumps(to_dict(viscoin_config(data))))
    full_disk(runs, monkeypatch, room=20_000)     # config.json fits, a checkpoint does not
    assert cli.run(V.main, ["--params", str(params), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: no space left on device: {tmp_path / 'run' / 'checkpoint.pt'} needs ")
    assert_no_temporaries(tmp_path / "run")


def test_cache_on_a_full_disk_is_removed_and_named(data, tmp_path, monkeypatch):
    config = dict(json.loads(Path(data["yaml"]).read_text()), cache_dir=str(tmp_path / "cache"), workers=1)
    full_disk(P, monkeypatch, room=50_000)        # the train images (73 kB) do not fit
    with pytest.raises(runs.NoSpaceLeft, match=rf"no space left on device: {tmp_path / 'cache'} needs 0\.1 MB "
                                               r"for the train images.*partial cache was removed"):
        P.prepare(config)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert load_split(Path(P.prepare(config)).parent, "train").images.shape == (24, 32, 32, 3)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs (root and mount needed; skipped where it cannot be mounted)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_real_full_tmpfs_cache_and_checkpoint(data, small_tmpfs, tmp_path, monkeypatch):
    """The issue's reproduction: data.prepare with its cache on a 1 MB tmpfs (SIGBUS before), from the
    command line and, past the free-space check, into the kernel's ENOSPC; and a checkpoint larger
    than the tmpfs (torch's 'unexpected pos' and a 30 MB .tmp before)."""
    params = tmp_path / "data.yaml"
    params.write_text(json.dumps(dict(json.loads(Path(data["yaml"]).read_text()),
                                      cache_dir=str(small_tmpfs / "cache"), resolution=160, workers=1)))
    out = subprocess.run([sys.executable, "-m", "viscoin_core.data.prepare", "--params", str(params)], cwd=ROOT,
                         env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]      # not -7 (SIGBUS)
    [line] = out.stderr.strip().splitlines()
    # 1.8 MB of 160 px images and 2.9 MB of their five part masks (one byte per pixel each)
    assert re.fullmatch(rf"error: no space left on device: {re.escape(str(small_tmpfs / 'cache'))} needs 4\.7 MB "
                        r"for the train images and their part masks \(\d+\.\d MB free\); the partial cache was "
                        r"removed", line), line
    assert list((small_tmpfs / "cache").iterdir()) == []
    monkeypatch.setattr(P, "require_space", lambda *args: None)    # write until the tmpfs is full
    with pytest.raises(runs.NoSpaceLeft, match=r"needs 1\.8 MB for the train images.*partial cache was removed"):
        P.prepare(params)
    assert list((small_tmpfs / "cache").iterdir()) == []

    runs.save_atomic({"w": torch.zeros(10)}, small_tmpfs / "checkpoint.pt")
    with pytest.raises(runs.NoSpaceLeft, match=r"checkpoint.pt needs 1\.9 MB.*previous content is kept"):
        runs.save_atomic({"w": torch.zeros(500_000)}, small_tmpfs / "checkpoint.pt")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == [".cache.lock", "cache", "checkpoint.pt"]
    assert torch.equal(runs.load_checkpoint(small_tmpfs)["w"], torch.zeros(10))


# ============================================================================= NaN and inf

@pytest.fixture
def poisoned_adam(monkeypatch):
    """poison(k): the k-th Adam step from now (over every optimiser) leaves NaN in 3 values of its first parameter."""
    real = torch.optim.Adam.step
    state = {"n": 0, "at": None}

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        state["n"] += 1
        if state["n"] == state["at"]:
            param = self.param_groups[0]["params"][0]
            mask = torch.zeros(param.shape, dtype=torch.bool)
            mask.view(-1)[:3] = True
            with torch.no_grad():
                param.copy_(torch.where(mask, float("nan"), param))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return lambda k: state.update(at=state["n"] + k)


def test_viscoin_nan_parameters_stop_without_writing(data, tmp_path, poisoned_adam):
    run = tmp_path / "run"
    poisoned_adam(2)                     # the update of iteration 1
    with pytest.raises(loop.NonFiniteLoss, match=r"^parameter 'psi\.[\w.]+' holds 3 NaN/inf values after the update "
                       rf"of iteration 1; training stopped, the last finite checkpoint is {run / 'checkpoint.pt'} "
                       r"\(iteration 1\); nothing was written after it$"):
        V.train_viscoin(viscoin_config(data), run)
    assert runs.load_checkpoint(run)["iteration"] == 1    # finite (load_checkpoint checks) and not replaced
    assert not (run / V.FINAL).exists() and runs.read_metrics(run) is None


def test_viscoin_lr_1e6_stops_and_never_saves_nan(data, tmp_path, capsys):
    """The issue's `--set lr=1.0e+6`: the run stops, naming the term or parameter, and whatever
    checkpoint is on disk is finite (load_viscoin reads it)."""
    params = tmp_path / "v.yaml"
    params.write_text(json.dumps(to_dict(viscoin_config(data, iterations=6))))
    argv = ["--params", str(params), "--run-dir", str(tmp_path / "run"), "--set", "lr=1e6"]
    assert cli.run(V.main, argv) == 2
    line = one_error_line(capsys)
    assert re.search(r"(is (nan|inf) at|NaN/inf values.* after the update of) iteration \d; training stopped, ", line)
    if (tmp_path / "run" / "checkpoint.pt").exists():
        model.load_viscoin(tmp_path / "run")


def test_nonfinite_checkpoints_are_refused_by_name(data, viscoin_reference, tmp_path):
    reference, _ = viscoin_reference
    record = torch.load(reference / "checkpoint.pt", weights_only=True)
    weight = record["psi"][next(iter(record["psi"]))]
    weight[(0,) * weight.dim()] = float("inf")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "log.jsonl"):
        (run / name).write_bytes((reference / name).read_bytes())
    torch.save(record, run / "checkpoint.pt")
    with pytest.raises(runs.CheckpointError, match=rf"^{run / 'checkpoint.pt'}: 'psi\.[\w.]+' holds 1 NaN/inf values"):
        model.load_viscoin(run)
    with pytest.raises(runs.CheckpointError, match="refusing a non-finite checkpoint"):
        V.train_viscoin(viscoin_config(data), run)
    with pytest.raises(loop.NonFiniteLoss, match=r"refusing to write .*a\.pt: 'psi\.[\w.]+' holds 1 NaN/inf"):
        runs.save_atomic(record, tmp_path / "a.pt", finite=True)
    assert not (tmp_path / "a.pt").exists()


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_weights_only_refusals_name_the_file(tmp_path):
    torch.save({"x": Hostile()}, tmp_path / "checkpoint.pt")
    with pytest.raises(runs.CheckpointError, match=rf"^{tmp_path / 'checkpoint.pt'}: refused by torch.load\(weights_only"):
        runs.load_checkpoint(tmp_path)
    torch.save({"kwargs": Hostile()}, tmp_path / "f.pt")
    from viscoin_core.nets.classifier import load_classifier
    with pytest.raises(runs.CheckpointError, match=rf"^{tmp_path / 'f.pt'}: refused"):
        load_classifier(tmp_path / "f.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(runs.CheckpointError, match=r"torn\.pt: not a readable torch file"):
        runs.load_torch(tmp_path / "torn.pt")


def test_classifier_stops_on_divergence_and_nan(data, tmp_path, poisoned_adam):
    run = tmp_path / "diverged"
    with pytest.raises(loop.NonFiniteLoss, match=r"loss term 'cross_entropy' is .* at step \d+, above 1000: training "
                                                 r"diverged.*training stopped, (no checkpoint|the last finite)"):
        C.train_classifier(classifier_config(data, lr=1e6, epochs=20), run)
    assert runs.read_metrics(run) is None and not (run / "f.pt").exists()
    if (run / "checkpoint.pt").exists():
        runs.load_checkpoint(run)                         # finite

    run = tmp_path / "nan"
    poisoned_adam(3)                                      # the first update of epoch 2 (2 steps per epoch)
    with pytest.raises(loop.NonFiniteLoss, match=rf"'cross_entropy' is nan at step 3; training stopped, the last "
                       rf"finite checkpoint is {re.escape(str(run / 'checkpoint.pt'))} \(epoch 1 of 3\)"):
        C.train_classifier(classifier_config(data), run)
    assert runs.load_checkpoint(run)["epoch"] == 0

    run = tmp_path / "nan_last_step"
    poisoned_adam(4)                                      # the last update of epoch 2: caught before its checkpoint
    with pytest.raises(loop.NonFiniteLoss, match=r"parameter '[\w.]+' holds 3 NaN/inf values after the update of "
                                                 r"epoch 2; training stopped, the last finite checkpoint is .*"
                                                 r"\(epoch 1 of 3\)"):
        C.train_classifier(classifier_config(data), run)
    assert runs.load_checkpoint(run)["epoch"] == 0


def test_gan_nan_parameters_stop_at_the_last_good_snapshot(data, tmp_path, poisoned_adam):
    cfg = gan_tiny_config(data=data["yaml"], device="cpu")
    run = tmp_path / "run"
    poisoned_adam(7)                  # step 2 (0-based), after the snapshot of step 2
    with pytest.raises(loop.NonFiniteLoss, match=rf"is nan at step \d; training stopped, the last good snapshot is "
                                                 rf"{run / 'checkpoint.pt'} \(step 2\); nothing was written after it"):
        gan.train_gan(cfg, run)
    assert runs.load_checkpoint(run)["step"] == 2 and not (run / "G.pt").exists()


# ============================================================================= odd images

def save_16bit(path: Path, value: int, size=(16, 16)) -> None:
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint16)).save(path)


def odd_images(folder: Path) -> None:
    """One image of each odd kind in `folder` (16 px, but for the huge and the one-pixel ones)."""
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(folder / "ok.png")
    good = (folder / "ok.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "png_named.jpg").write_bytes(good)                       # misnamed but an image
    (folder / "text_named.png").write_text("not an image")             # misnamed and not an image
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=100)
    Image.new("L", (16, 16), 90).save(folder / "grey.png")
    Image.new("LA", (16, 16), (0, 0)).save(folder / "la.png")          # fully transparent black
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(folder / "rgba.png")   # fully transparent red
    Image.new("RGBA", (16, 16), (0, 0, 255, 255)).save(folder / "rgba_opaque.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette.save(folder / "palette.png", transparency=1)               # every pixel transparent
    save_16bit(folder / "grey16.png", 32768)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "huge.png")    # above the bomb limit set below
    Image.new("RGB", (1, 1), (250, 100, 0)).save(folder / "one_pixel.png")


def test_odd_images_are_read_scaled_or_rejected_with_a_reason(tmp_path, monkeypatch):
    odd_images(tmp_path / "raw" / "train" / "odd")
    (tmp_path / "raw" / "test" / "odd").mkdir(parents=True)
    Image.new("RGB", (16, 16), 7).save(tmp_path / "raw" / "test" / "odd" / "t.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)    # 64 x 64 is then a decompression bomb
    config = {"dataset": "folder", "root": str(tmp_path / "raw"), "cache_dir": str(tmp_path / "cache"),
              "resolution": 8, "workers": 1, "max_rejected": 1.0}
    with pytest.warns(UserWarning, match=r"3 train image\(s\) had transparency, composited on white"):
        manifest = read_manifest(P.prepare(config).parent)
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["rejected"]["train"]}
    assert sorted(reasons) == ["huge.png", "text_named.png", "truncated.png", "zero.png"]
    assert "DecompressionBomb" in reasons["huge.png"] and "cannot identify" in reasons["zero.png"]
    assert "truncated" in reasons["truncated.png"] or "OSError" in reasons["truncated.png"]
    assert sorted(Path(c["path"]).name for c in manifest["converted"]["train"]) == ["la.png", "palette.png", "rgba.png"]
    train = load_split(tmp_path / "cache", "train")
    kept = sorted(p.name for p in (tmp_path / "raw" / "train" / "odd").iterdir() if p.name not in reasons)
    pixel = {name: tuple(int(v) for v in train.images[i][4, 4]) for i, name in enumerate(kept)}
    assert pixel == {"cmyk.jpg": (0, 255, 255), "grey.png": (90, 90, 90), "grey16.png": (128, 128, 128),
                     "la.png": (255, 255, 255), "ok.png": (10, 200, 30), "one_pixel.png": (250, 100, 0),
                     "palette.png": (255, 255, 255), "png_named.jpg": (10, 200, 30), "rgba.png": (255, 255, 255),
                     "rgba_opaque.png": (0, 0, 255)}


def test_16bit_scaling_and_unknown_ranges(tmp_path):
    from viscoin_core.data.transforms import load_rgb, load_rgb_noted
    for value, expected in ((0, 0), (257, 1), (32768, 128), (65535, 255)):
        save_16bit(tmp_path / "g.png", value)
        assert np.asarray(load_rgb(tmp_path / "g.png"))[0, 0].tolist() == [expected] * 3
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="32-bit float image"):
        load_rgb(tmp_path / "f.tif")
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "half.png")
    image, note = load_rgb_noted(tmp_path / "half.png")
    assert np.asarray(image)[0, 0].tolist() == [127] * 3 and "composited on white" in note


def test_classes_with_too_few_images_fail_or_warn_naming_the_folder(tmp_path):
    for name, count in (("many", 4), ("single", 1)):
        (tmp_path / "pool" / name).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (8, 8), (k, 9, 9)).save(tmp_path / "pool" / name / f"{k}.png")
    config = {"dataset": "folder", "root": str(tmp_path / "pool"), "cache_dir": str(tmp_path / "c1"),
              "resolution": 8, "workers": 1}
    with pytest.warns(UserWarning, match=rf"class 'single' \({tmp_path / 'pool' / 'single'}\) has no test image"):
        manifest = read_manifest(P.prepare(config).parent)
    assert any("'single'" in w for w in manifest["warnings"])

    for split, name, ok in (("train", "good", 2), ("train", "broken", 0), ("test", "good", 1), ("test", "broken", 1)):
        folder = tmp_path / "given" / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(ok):
            Image.new("RGB", (8, 8), (k, 0, 0)).save(folder / f"{k}.png")
        if split == "train" and name == "broken":
            for k in range(2):
                (folder / f"bad{k}.png").write_bytes(b"")
    config = {"dataset": "folder", "root": str(tmp_path / "given"), "cache_dir": str(tmp_path / "c2"),
              "resolution": 8, "workers": 1, "max_rejected": 1.0}
    with pytest.raises(DataError, match=rf"class 'broken' \({tmp_path / 'given' / 'train' / 'broken'}\) has no "
                                        r"readable training image \(2 rejected: train/broken/bad0\.png"):
        P.prepare(config)
    assert not (tmp_path / "c2" / "manifest.json").exists() and list((tmp_path / "c2").glob("*.npy")) == []


# ============================================================================= config mistakes

def one_error_line(capsys) -> str:
    """The one 'error:' line of stderr, which must be its last line (progress bars may come before it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, lines
    return errors[0]


def test_set_reads_exponents_as_floats():
    assert loop.parse_overrides(["lr=1e6", "lr2=1e-4", "n=3", "s=abc"]) == {"lr": 1e6, "lr2": 1e-4, "n": 3, "s": "abc"}
    with pytest.raises(ConfigError, match=r"--set 'lr': expected KEY=VALUE"):
        loop.parse_overrides(["lr"])


@pytest.mark.parametrize("extra, match", [
    (["--set", "lrr=0.1"], r"unknown parameter\(s\) \['lrr'\]"),
    (["--set", "iterations=abc"], r"'iterations' = 'abc' is not allowed; expected type int"),
    (["--set", "iterations=0"], r"'iterations' = 0 is not allowed"),
    (["--set", "lr"], "expected KEY=VALUE"),
    (["--set", "x=[1,"], "not valid YAML"),
    (["--set", "f=nowhere/f.pt"], r"parameter 'f' = 'nowhere/f\.pt': .*nowhere/f\.pt does not exist"),
    (["--set", "G=nowhere/G.pt"], r"parameter 'G' = 'nowhere/G\.pt'"),
    (["--set", "cache_dir=nowhere"], r"parameter 'cache_dir' = 'nowhere': .* holds no manifest\.json"),
])
def test_viscoin_cli_mistakes_are_one_line(data, tmp_path, capsys, extra, match):
    params = tmp_path / "v.yaml"
    params.write_text(json.dumps(to_dict(viscoin_config(data))))
    run = tmp_path / "run"
    assert cli.run(V.main, ["--params", str(params), "--run-dir", str(run), *extra]) == 2
    assert re.search(match, one_error_line(capsys))
    assert not run.exists()                     # found before the run directory is made


def test_parameter_file_mistakes_are_one_line(tmp_path, capsys):
    assert cli.run(V.main, ["--params", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "missing.yaml does not exist" in one_error_line(capsys)
    (tmp_path / "bad.yaml").write_text("lr: [1,\n  f: 2\n")
    assert cli.run(C.main, ["--params", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "bad.yaml: not valid YAML" in one_error_line(capsys)
    (tmp_path / "exp.yaml").write_text("data: nowhere.yaml\nlr: 1e-4\n")     # 1e-4 is a float, data is missing
    assert cli.run(C.main, ["--params", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "parameter 'data' = 'nowhere.yaml'" in one_error_line(capsys) and not (tmp_path / "r").exists()
    assert cli.run(gan.main, ["--params", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "exp.yaml: unknown parameter(s) ['lr'] for GanConfig" in one_error_line(capsys)


def test_other_commands_mistakes_are_one_line(tmp_path, capsys):
    from viscoin_core import batch
    from viscoin_core.eval.__main__ import main as eval_main
    assert cli.run(batch.main, ["table99", "--profile", "smoke"]) == 2
    assert "unknown table 'table99'" in one_error_line(capsys)
    assert cli.run(eval_main, ["--run-dir", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in one_error_line(capsys)
    (tmp_path / "d.yaml").write_text("dataset: folder\nroot: x\ncache_dir: y\ncrop: diagonal\n")
    assert cli.run(P.main, ["--params", str(tmp_path / "d.yaml")]) == 2
    assert "'crop'" in one_error_line(capsys)


def test_debug_shows_the_traceback_and_bugs_say_how(tmp_path, capsys, monkeypatch):
    def broken(argv):
        raise TypeError("a bug")
    assert cli.run(broken, []) == 1
    assert "unexpected TypeError: a bug (run again with --debug or VISCOIN_DEBUG=1" in one_error_line(capsys)
    with pytest.raises(TypeError):
        cli.run(broken, ["--debug"])
    monkeypatch.setenv("VISCOIN_DEBUG", "1")
    with pytest.raises(ConfigError):
        cli.run(V.main, ["--params", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")])


def test_every_entry_point_uses_the_shared_error_path():
    """Each `python -m` module ends with cli.run, and three really run as a user would start them."""
    modules = ["train/viscoin.py", "train/classifier.py", "train/gan.py", "data/prepare.py", "eval/__main__.py",
               "eval/audit.py", "batch.py", "bench.py"]
    for name in modules:
        tail = (ROOT / "viscoin_core" / name).read_text().rsplit('if __name__ == "__main__":', 1)[1]
        assert "sys.exit(run(main))" in tail, name
    commands = [["viscoin_core.train.viscoin", "--params", "nowhere.yaml", "--run-dir", "r"],
                ["viscoin_core.batch", "table99", "--profile", "smoke"],
                ["viscoin_core.data.prepare", "--params", "params/smoke/data_toybirds.yaml", "--set", "resolution=4"]]
    children = [subprocess.Popen([sys.executable, "-m", *c], cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in commands]
    for command, child in zip(commands, children):
        _, err = child.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert child.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (command, err)
