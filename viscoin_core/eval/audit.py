"""Measured effects of two quirks of the released code (docs/DISCREPANCIES.md items 4 and 5).

    python -m viscoin_core.eval.audit --run-dir DIR [--n-images N] [--device auto]

prints one JSON object and writes it to DIR/audit.json; docs/DISCREPANCIES.md quotes the numbers.

Item 4, FID inputs. The released test loop hands its FID network (StyleGAN2-ADA's Inception, which
expects pixel values in [0, 255] and maps them with (v - 128) / 128) the real images ImageNet-
normalised (about [-2.1, 2.6]) and the reconstructions in G's [-1, 1]. Both sets therefore reach the
network as nearly uniform mid-grey images, and the two sets differ by the offset between the two
ranges. Offline there are no Inception weights, so the same mistake is replayed with the feature
network at hand, f: a value v meant as 0-255 is what f sees as v / 127.5 - 1 (f's own convention
maps 0-255 to [-1, 1] this way). Reported: FID/KID with correct inputs, with the code's inputs, and
both for a "perfect reconstruction" (fake = the real images themselves), where the correct FID is 0.

Item 5, faithfulness. The released code reports as "faithfulness" the mean over test images of
p_g(c^ | G(Phi with the concepts of r_k > 0.2 multiplied by 1)), i.e. the class probability of the
plain reconstruction: no concept is removed. Reported beside the paper's definition (median drop
of p_g(c^) when the concepts with r_k > tau are zeroed) and its random baseline, on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from viscoin_core.nets.classifier import IMAGENET_MEAN, IMAGENET_STD


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> ImageNet-normalised tensors (what the released loader hands every network)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def as_if_0_255(v: torch.Tensor) -> torch.Tensor:
    """What a network taking [-1, 1] sees when a tensor meant as 0-255 pixels is v: v / 127.5 - 1."""
    return v / 127.5 - 1


def code_fid_inputs(x_real: torch.Tensor, x_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released test loop's FID inputs, replayed for a [-1, 1] feature network:
    real images ImageNet-normalised, fakes as G made them, both read as if they were 0-255."""
    return as_if_0_255(imagenet_normalise(x_real)), as_if_0_255(x_fake)


@torch.no_grad()
def audit(run_dir: str | Path, n_images: int | None = 256, device: str = "cpu", batch_size: int = 32,
          seed: int = 0, threshold: float = 0.2, code_multiplier: float = 1.0, write: bool = True) -> dict:
    """Both measurements on (a fixed random subset of) `n_images` test images; see the module docstring."""
    from viscoin_core import streams
    from viscoin_core.eval import load_system_and_test_split
    from viscoin_core.eval import concepts as C
    from viscoin_core.eval.passes import fid_kid, image_pass

    system, test, _ = load_system_and_test_split(run_dir, device)
    index = C._subset(len(test), n_images, streams.generator(seed, "eval.test_subset"))
    out = image_pass(_audit_batch(system, threshold, code_multiplier), test, index, batch_size, device, desc="audit")
    n = len(index)
    kid_seed = streams.stream_seed(seed, "eval.kid")
    item4 = {
        "features": "classifier (f.penultimate); Inception weights are not available offline",
        "correct": fid_kid(out["real"], out["fake"], kid_seed),
        "code": fid_kid(out["code_real"], out["code_fake"], kid_seed),
        "correct_perfect_reconstruction": fid_kid(out["real"], out["real"], kid_seed),
        "code_perfect_reconstruction": fid_kid(out["code_real"], out["code_perfect"], kid_seed),
        "input_seen_by_network": {k: {"min": float(v.min()), "max": float(v.max()), "std": float(v.std())}
                                  for k, v in (("real", out["seen_real"]), ("fake", out["seen_fake"]))},
        "input_correct_std": float(torch.stack([test[int(i)][0] for i in index[:64]]).std()),
    }
    # The paper's faithfulness on the same images, from the concepts the pass found.
    pool = C.ConceptPool(index, out["phi"], out["phi_prime"], out["activations"], out["predicted"], out["labels"])
    summary = C.faithfulness(system, pool, n_images=None, batch_size=batch_size,
                             seed=streams.stream_seed(seed, "eval.faithfulness"))
    p_lambda1, p_rec = out["p_lambda1"].double(), summary["p_rec"].double()
    item5 = {
        "code_faithfulness_mean": float(p_lambda1.mean()), "code_faithfulness_std": float(p_lambda1.std(unbiased=False)),
        "code_threshold": threshold, "code_multiplier": code_multiplier,
        "max_abs_difference_lambda1_vs_plain_reconstruction": float((p_lambda1 - p_rec).abs().max()),
        "paper_faithfulness_median": summary["faithfulness"],
        "paper_random_baseline_median": summary["faithfulness_random"],
        "concepts_removed_mean": summary["removed"],
    }
    result = {"run_dir": str(run_dir), "n_images": n, "item4_fid_inputs": item4, "item5_faithfulness": item5}
    if write:
        from viscoin_core.runs import write_json_atomic
        write_json_atomic(Path(run_dir) / "audit.json", result)
    return result


def _audit_batch(system, threshold: float, code_multiplier: float):
    """What the audit keeps of each batch x: f's features of the correct and the released code's FID
    inputs, the ranges those inputs reach the network in, the code's "faithfulness" p_g(c^ | x~ with
    the concepts of r_k > threshold times code_multiplier), and the concept maps for the paper's."""
    from viscoin_core.eval import concepts as C

    def batch(x: torch.Tensor) -> dict[str, torch.Tensor]:
        phi, phi_prime = system.concepts(x)
        x_rec = system.reconstruct(phi, phi_prime).float()
        code_real, code_fake = code_fid_inputs(x, x_rec)
        _, code_perfect = code_fid_inputs(x, x)
        values = {key: system.f.penultimate(images).double()
                  for key, images in (("real", x), ("fake", x_rec), ("code_real", code_real),
                                      ("code_fake", code_fake), ("code_perfect", code_perfect))}
        # Item 5: the code's number, amplifying the concepts with r_k > threshold by code_multiplier.
        predicted = system.theta(phi).argmax(dim=1)
        selected = C.concept_relevance(phi, system.theta, predicted) > threshold
        amplified = phi * torch.where(selected, code_multiplier, 1.0)[:, :, None, None]
        p1 = F.softmax(system.g_logits(system.reconstruct(amplified, phi_prime)), dim=1)
        return {**values, "seen_real": code_real, "seen_fake": code_fake,
                "p_lambda1": p1.gather(1, predicted[:, None]).squeeze(1), "phi": phi, "phi_prime": phi_prime,
                "activations": C.pool(system.theta, phi), "predicted": predicted}
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viscoin_core.eval.audit", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--n-images", type=int, default=256, help="test images (0: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from viscoin_core.runs import pick_device
    result = audit(args.run_dir, args.n_images or None, str(pick_device(args.device)), args.batch_size, args.seed)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from viscoin_core.cli import run
    sys.exit(run(main))
