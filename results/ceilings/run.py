"""What a perfect model would score on two measures behind issue 13's bars, on the stand-ins.

    python results/ceilings/run.py --profile demo     # or mini; writes results/ceilings/<profile>.md

1. Reconstruction identification in class (`metrics.reconstruction_identification`, pixel L2 on
   the images the profile's Table 3 / NCT default evaluation reads: its `eval_images` test images,
   the same seeded subset) of three stand-in "reconstructions" of each test image:
   - *same factors, new layout*: the image drawn again from its own generating factors with another
     random stream: every factor right (class, colours, sizes, densities, stain), the random
     placement (nuclei, fibres, regions; a bird's clutter and plumage noise) not;
   - *another image of its class* (from the training split): a control that must score chance;
   - *the input blurred* (Gaussian, 1 px): the layout kept, the finest detail lost.
2. Precision and recall (`metrics.precision_recall`, k = 3) of held-out real test images against
   as many training images, on the penultimate features of the pretrained stand-in classifier
   (pretrained/<stand-in>/f.pt, which every profile's f is fine-tuned from): what a G whose samples
   were real images would get with the profile's `fid_images`.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from viscoin_core import streams  # noqa: E402
from viscoin_core.config import read_params  # noqa: E402
from viscoin_core.data import load_split  # noqa: E402
from viscoin_core.data import synthetic as S  # noqa: E402
from viscoin_core.data.prepare import ensure_prepared  # noqa: E402
from viscoin_core.eval.concepts import _subset  # noqa: E402
from viscoin_core.eval.metrics import precision_recall, reconstruction_identification  # noqa: E402
from viscoin_core.nets.classifier import load_classifier  # noqa: E402

STAND_INS = {"toybirds": ("viscoin_cub.yaml", "gan_cub.yaml"), "toytissue": ("viscoin_nct.yaml", "gan_nct_1500k.yaml")}


def redraw(dataset: str, factors: np.ndarray, resolution: int, seed: int) -> torch.Tensor:
    """The images of `factors` (N, F) drawn with random stream `seed`: (N, 3, R, R) in [-1, 1]."""
    rng = np.random.default_rng([seed, 99])        # not a stream the dataset's own drawing uses
    draw = S.draw_toybirds if dataset == "toybirds" else S.draw_tissue
    images = draw(factors, rng, resolution)[0]
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 3, H, W) blurred by a separable Gaussian of `sigma` pixels, edges reflected."""
    r = int(3 * sigma) + 1
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)                                  # (3, 1, 1, 2r + 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(2, 3), groups=3)


def same_class_picks(labels: torch.Tensor, pool_labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each label, the index of a random image of that class in another split (`pool_labels`)."""
    return torch.stack([torch.nonzero(pool_labels == label).flatten()[
        torch.randint(int((pool_labels == label).sum()), (1,), generator=generator)][0] for label in labels.tolist()])


def identification_ceilings(train, test, eval_images: int, seed: int) -> dict[str, float]:
    index = _subset(len(test), eval_images, streams.generator(seed, "eval.test_subset"))  # as `evaluate`
    x = torch.stack([test[i][0] for i in index.tolist()])                                 # (N, 3, R, R)
    labels = test.labels[index]
    factors = test.factors[index].numpy()
    dataset = "toybirds" if "belly_red" in test.factor_names else "toytissue"
    recs = {"same factors, new layout": redraw(dataset, factors, x.shape[-1], seed),
            "another image of its class": torch.stack([train[int(i)][0] for i in same_class_picks(
                labels, train.labels, torch.Generator().manual_seed(seed))]),
            "the input blurred (1 px)": gaussian_blur(x, 1.0)}
    scores = {name: reconstruction_identification(rec, x, labels) for name, rec in recs.items()}
    return {"images": len(index), "chance": next(iter(scores.values()))["identification_in_class_chance"],
            **{name: s["identification_in_class"] for name, s in scores.items()}}


def real_precision_recall(train, test, f, n: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(split), generator=g)[:n].tolist() for split in (train, test)]
    with torch.no_grad():
        feats = [torch.cat([f.penultimate(torch.stack([split[i][0] for i in pick[s:s + 100]]))
                            for s in range(0, len(pick), 100)]) for split, pick in zip((train, test), picks)]
    return {"n": len(picks[1]), **precision_recall(feats[0], feats[1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo", choices=["demo", "mini"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"# Ceilings, profile {args.profile}", "",
             f"Made by `python results/ceilings/run.py --profile {args.profile}`.", "",
             "| stand-in | test images | chance % | same factors, new layout % | another image of its class % "
             "| the input blurred (1 px) % | real test vs train: precision | recall | images per side |",
             "|---|---|---|---|---|---|---|---|---|"]
    for stand_in, (viscoin_file, gan_file) in STAND_INS.items():
        row = read_params(ROOT / "params" / args.profile / viscoin_file)
        gan = read_params(ROOT / "params" / args.profile / gan_file)
        cache = ensure_prepared(str(ROOT / row["data"]))
        train, test = load_split(cache, "train"), load_split(cache, "test")
        ident = identification_ceilings(train, test, row["eval_images"], row.get("seed", 0))
        f = load_classifier(ROOT / "pretrained" / stand_in / "f.pt").float().eval()
        pr = real_precision_recall(train, test, f, min(gan["fid_images"], len(test)), 0)
        lines.append(f"| {stand_in} | {ident['images']} | {ident['chance']:.1f} | {ident['same factors, new layout']:.1f} "
                     f"| {ident['another image of its class']:.1f} | {ident['the input blurred (1 px)']:.1f} "
                     f"| {pr['precision']:.3f} | {pr['recall']:.3f} | {pr['n']} |")
        print(lines[-1], flush=True)
    out = Path(__file__).parent / f"{args.profile}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
