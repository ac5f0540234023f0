"""The concept explorer: pick an image, scale its most relevant concepts, watch G redraw it.

`concept_explorer(system, dataset)` returns an ipywidgets box: an image picker, one row per concept
active on the image (a lambda slider, 0..4, and an on/off toggle), the regenerated image, the
difference from the plain reconstruction, and g's class probabilities on the regenerated image,
all updated live. The computation lives in `regenerate`, a plain function, so it is tested without
a browser; the box also keeps `state` (what it shows now) for the same reason.
"""

from __future__ import annotations

import html
import io

import numpy as np
import torch
from PIL import Image

from viscoin_core.eval.concepts import System, concept_contributions, pool


@torch.no_grad()
def regenerate(system: System, x: torch.Tensor, scales: dict[int, float]) -> dict[str, torch.Tensor]:
    """Reconstruct x (1, 3, H, W) in [-1, 1] with phi_k multiplied by scales[k] (0 switches k off).

    Returns `x_rec` (plain reconstruction), `x_edit` (with the scaled concepts), `diff` (mean absolute
    difference per pixel, (H, W), in [0, 2]) and `probs` (C,): g's class probabilities on x_edit,
    i.e. what the interpretable network makes of the regenerated image.
    """
    phi, phi_prime = system.concepts(x)                          # (1, K, 3, 3), (1, 9K)
    x_rec = system.reconstruct(phi, phi_prime).clamp(-1, 1)
    gain = torch.ones(phi.shape[1], device=phi.device)
    for k, s in scales.items():
        gain[k] = s
    x_edit = system.reconstruct(phi * gain[None, :, None, None], phi_prime).clamp(-1, 1)
    probs = system.g_logits(x_edit).softmax(dim=1)[0]
    return {"x_rec": x_rec, "x_edit": x_edit, "diff": (x_edit - x_rec).abs().mean(dim=1)[0], "probs": probs}


@torch.no_grad()
def top_concepts(system: System, x: torch.Tensor, n: int) -> tuple[int, list[int]]:
    """(predicted class c^, up to n concepts active on x, the largest contribution first).

    A concept is active when its pooled activation maxpool(phi_k(x)) is above 0; only those can
    change the image when scaled (lambda * 0 = 0), so inactive ones are never offered, even when
    fewer than n are active. Order: alpha_k = maxpool(phi_k) W[c^, k] descending, ties (e.g. equal
    weights) broken by the larger activation, then by the smaller index.
    """
    phi, _ = system.concepts(x)
    predicted = system.theta(phi).argmax(dim=1)
    alpha = concept_contributions(phi, system.theta, predicted)[0].tolist()   # (K,)
    active = pool(system.theta, phi)[0].tolist()
    ranked = sorted((k for k in range(len(active)) if active[k] > 0), key=lambda k: (-alpha[k], -active[k], k))
    return int(predicted), ranked[:n]


def to_png(image: torch.Tensor, size: int = 160) -> bytes:
    """PNG bytes of an image (3, H, W) in [-1, 1] or a map (H, W) in [0, 1], enlarged to `size` px."""
    image = image.detach().float().cpu()
    if image.dim() == 3:
        array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    else:
        array = (image.clamp(0, 1) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).resize((size, size), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def probability_bars(probs: torch.Tensor, class_names: list[str], top: int = 5) -> str:
    """HTML bars of the `top` most probable classes, each class name in full (a table keeps the bars aligned)."""
    values, order = probs.sort(descending=True)
    rows = []
    for p, c in zip(values[:top].tolist(), order[:top].tolist()):
        name = html.escape(class_names[c] if c < len(class_names) else str(c))
        rows.append(f"<tr><td style='font-family:monospace;padding-right:0.5em'>{name}</td>"
                    f"<td><span style='display:inline-block;background:#4c72b0;height:0.8em;width:{p * 150:.0f}px'>"
                    f"</span> {p:.2f}</td></tr>")
    return f"<table style='border-collapse:collapse'>{''.join(rows)}</table>"


def concept_slider(k: int, max_lambda: float = 4.0, label_width: str = "initial"):
    """lambda for concept k, 0..max_lambda, labelled in full: ipywidgets cuts labels at ~80 px by default.

    label_width: a CSS width for the label ("initial": as wide as it needs); one width for all
    rows lines their sliders up.
    """
    import ipywidgets as w
    return w.FloatSlider(value=1.0, min=0.0, max=max_lambda, step=0.25, description=f"concept {k}",
                         style={"description_width": label_width})


def toggle_label(k: int, on: bool) -> str:
    """What concept k's toggle reads: the concept and its state, so a row read alone is unambiguous."""
    return f"concept {k}: {'on' if on else 'off'}"


def concept_toggle(k: int):
    """On/off button for concept k whose label follows its state ("concept k: on" / "concept k: off")."""
    import ipywidgets as w
    toggle = w.ToggleButton(value=True, description=toggle_label(k, True), layout=w.Layout(width="auto"),
                            tooltip=f"switch concept {k} off (lambda 0) or back on")

    def relabel(change):
        toggle.description = toggle_label(k, change["new"])
    toggle.observe(relabel, names="value")
    return toggle


def concept_explorer(system: System, dataset, n_concepts: int = 6, max_lambda: float = 4.0, size: int = 160):
    """An ipywidgets explorer over `dataset` (items (image in [-1, 1], label)) for a trained system.

    `system` is an `eval.concepts.System` (`load_system_and_test_split` gives one). The returned VBox has
    `picker`, `sliders` and `toggles` (dicts concept -> widget) and `state` (index, predicted class,
    concepts, scales, and the tensors `regenerate` returned), updated on every change.
    """
    import ipywidgets as w

    class_names = list(getattr(dataset, "class_names", [])) or [str(c) for c in range(system.theta.linear.out_features)]
    picker = w.BoundedIntText(value=0, min=0, max=len(dataset) - 1, description="image")
    original, edited, difference = (w.Image(format="png", width=size, height=size) for _ in range(3))
    bars = w.HTML()
    title = w.HTML()
    concept_rows = w.VBox()
    box = w.VBox([w.HBox([picker, title]), w.HBox([
        w.VBox([w.HTML("<b>original</b>"), original]), w.VBox([w.HTML("<b>regenerated</b>"), edited]),
        w.VBox([w.HTML("<b>difference</b>"), difference]), w.VBox([w.HTML("<b>g on regenerated</b>"), bars])]),
        concept_rows])
    box.picker, box.sliders, box.toggles, box.state = picker, {}, {}, {}

    def scales() -> dict[int, float]:
        return {k: (box.sliders[k].value if box.toggles[k].value else 0.0) for k in box.sliders}

    def redraw(_=None):
        out = regenerate(system, box.state["x"], scales())
        box.state.update(out, scales=scales())
        edited.value, difference.value = to_png(out["x_edit"][0], size), to_png(out["diff"] / 2, size)
        bars.value = probability_bars(out["probs"].cpu(), class_names)

    def pick(_=None):
        x = dataset[picker.value][0][None].to(next(system.theta.parameters()).device)
        predicted, chosen = top_concepts(system, x, n_concepts)
        box.state.update(index=picker.value, x=x, predicted=predicted, concepts=chosen)
        active = f"concepts {chosen}" if chosen else "no concept is active on this image"
        title.value = f"predicted: <b>{html.escape(class_names[predicted])}</b>; {active}"
        original.value = to_png(x[0], size)
        # Wide enough for the longest label ("concept 179"), in ch (the width of a digit).
        width = f"{max((len(f'concept {k}') for k in chosen), default=0) + 1}ch"
        box.sliders = {k: concept_slider(k, max_lambda, width) for k in chosen}
        box.toggles = {k: concept_toggle(k) for k in chosen}
        for k in chosen:
            box.sliders[k].observe(redraw, names="value")
            box.toggles[k].observe(redraw, names="value")
        concept_rows.children = [w.HBox([box.sliders[k], box.toggles[k]]) for k in chosen]
        redraw()

    picker.observe(pick, names="value")
    pick()
    return box


def snapshot(box) -> np.ndarray:
    """The regenerated image the explorer shows now, as a uint8 array (H, W, 3): for tests and static views."""
    return np.asarray(Image.open(io.BytesIO(to_png(box.state["x_edit"][0]))))
