"""Draw levers.png from the runs here: `python results/demo/levers/figure.py` (from the repository root)."""
from pathlib import Path

from viscoin_core.viz.figures import runs_compared

HERE = Path(__file__).parent
RUNS = {"study settings": "paper", "variants (Omega x1, latent regression)": "variants",
        "variants, omega_reg_weight 0": "variants_omega_reg0", "variants, fuse_at layer2": "variants_layer2",
        "study settings, lr 3e-3": "paper_lr3e-3", "variants, lr 3e-3": "variants_lr3e-3"}

if __name__ == "__main__":
    runs_compared({label: HERE / name / "log.jsonl" for label, name in RUNS.items()},
                  ["identification_in_class", "mse", "lpips"], out=HERE / "levers")
