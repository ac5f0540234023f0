"""The results tables: our numbers beside the published ones, and Table 8 of every experiment's settings.

`params/tables.yaml` says what each table holds (its rows, their parameter files, the columns and
the published values they sit beside, from `params/reference_numbers.yaml`); the numbers are the
runs' metrics.json. Written as results/<profile>/<table>.csv and .md. Running the rows is
`viscoin_core.batch`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from viscoin_core.config import ConfigError, read_params, repo_root

NUMBERED_TABLES = tuple(f"table{i}" for i in range(1, 8))


# ---------------------------------------------------------------------------------------------
# What the tables hold

def load_tables(path: Path | None = None) -> dict:
    """params/tables.yaml, checked for the keys every table and row needs."""
    path = path or repo_root() / "params" / "tables.yaml"
    tables = yaml.safe_load(Path(path).read_text())
    for name, table in tables.items():
        for key in ("title", "notebook", "stage", "columns", "rows"):
            if key not in table:
                raise ConfigError(f"{path}: table '{name}' lacks the key '{key}'")
        for row in table["rows"]:
            if "label" not in row or "params" not in row:
                raise ConfigError(f"{path}: a row of '{name}' lacks 'label' or 'params': {row}")
    return tables


# ---------------------------------------------------------------------------------------------
# Our numbers beside the published ones

def published_numbers(path: Path | None = None) -> dict:
    return yaml.safe_load(Path(path or repo_root() / "params" / "reference_numbers.yaml").read_text())


def lookup(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def mean_std(values: list[float]) -> str:
    """'m' for one value, 'm ± s' (sample std) for several; numbers to 4 significant digits."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4g} ± {std:.2g}"


def column_spec(ours: str, spec: Any) -> tuple[str, str, float]:
    """(header, published key, scale for our value) of one table column; `ours` is a metrics.json
    key, dotted for a number inside one of its objects (concept_localisation.mean)."""
    if isinstance(spec, str):
        return ours, spec, 1.0
    return spec.get("header", ours), spec["published"], float(spec.get("scale", 1.0))


def build_table(table: str, profile: str, runs: list, status: dict | None = None,
                tables: dict | None = None, published: dict | None = None) -> pd.DataFrame:
    """Our numbers (mean ± std over seeds) beside the published ones, one line per row of the table.

    `runs`: the table's `batch.Run`s (each with .label and .run_dir); `status`: run -> 'done' | 'failed: ...'.
    """
    tables = tables or load_tables()
    published = published or published_numbers()
    spec = tables[table]
    status = status or {}
    lines = []
    for row in spec["rows"]:
        row_runs = [r for r in runs if r.label == row["label"]]
        metrics = [json.loads((r.run_dir / "metrics.json").read_text())
                   for r in row_runs if (r.run_dir / "metrics.json").exists()]
        failures = [status[r] for r in row_runs if status.get(r, "").startswith("failed")]
        line = {"row": row["label"], "seeds": len(metrics)}
        ref = lookup(published, f"{spec.get('published', '')}.{row.get('published', '')}") or {}
        for ours, col in spec["columns"].items():
            header, pub_key, scale = column_spec(ours, col)
            values = [lookup(m, ours) * scale for m in metrics if _is_number(lookup(m, ours))]
            # a finished run without the number did not measure it (no part masks on real data)
            line[header] = mean_std(values) if values else ("failed" if failures else ("n/a" if metrics else "not run"))
            if pub_key is not None:      # a column of ours alone (no published counterpart) gets no pair
                line[f"{header} (published)"] = ref.get(pub_key) if isinstance(ref, dict) else None
        # What the numbers were measured with: feature extractor, LPIPS network, f's starting weights.
        for key in ("fid_features", "lpips_backbone", "pretrained"):
            if key != "pretrained" or any(key in m for m in metrics):
                line[key] = ", ".join(sorted({str(m.get(key)) for m in metrics if key in m}))
        line["status"] = "; ".join(failures) if failures else ("ok" if metrics else "not run")
        lines.append(line)
    return pd.DataFrame(lines)


def row_beside_published(metrics: dict, table: str, published_row: str, tables: dict | None = None,
                         published: dict | None = None) -> pd.DataFrame:
    """One run's numbers beside the published row of a table (what a notebook shows after a run)."""
    tables = tables or load_tables()
    published = published or published_numbers()
    spec = tables[table]
    ref = lookup(published, f"{spec.get('published', '')}.{published_row}") or {}
    lines = []
    for ours, col in spec["columns"].items():
        header, pub_key, scale = column_spec(ours, col)
        value = lookup(metrics, ours)
        lines.append({"metric": header, "ours": value * scale if _is_number(value) else value,
                      "published": ref.get(pub_key) if isinstance(ref, dict) else None})
    return pd.DataFrame(lines).set_index("metric")


def _is_number(value: Any) -> bool:
    """A finite int or float (metrics.json writes NaN as null; booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def experiments_table(profile: str, tables: dict | None = None, root: Path | None = None) -> pd.DataFrame:
    """Table 8: every experiment of Tables 1-7 in a profile with the settings its parameter file gives."""
    root = root or repo_root()
    tables = tables or load_tables(root / "params" / "tables.yaml")
    lines = []
    for name in NUMBERED_TABLES:
        for row in tables.get(name, {}).get("rows", []):
            path = root / "params" / profile / row["params"]
            params = read_params(path) if path.is_file() else {}
            lines.append({"table": name, "row": row["label"], "params": f"params/{profile}/{row['params']}",
                          **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()}})
    return pd.DataFrame(lines)


# ---------------------------------------------------------------------------------------------
# Writing

def markdown(df: pd.DataFrame) -> str:
    """A pipe table of a DataFrame (empty cells for missing values)."""
    cells = df.astype(object).where(df.notna(), "")
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str, note: str) -> Path:
    """results/<profile>/<name>.csv and .md (title, the table, a note of what was used)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / f"{name}.csv", index=False)
    text = f"# {title}\n\n{markdown(df)}\n\n{note}\n"
    (out_dir / f"{name}.md").write_text(text)
    return out_dir / f"{name}.md"


PROFILE_NOTES = {
    "paper": "",
    "rehearsal": (" Profile `rehearsal` runs the paper's sizes on miniature trees in the real formats, with random-"
                  "weight networks where the pretrained files are absent (`pretrained`, `fid_features`, "
                  "`lpips_backbone` say which) and budgets of a few steps: its numbers test the plumbing, not "
                  "the method."),
}
STANDIN_NOTE = (" Profile `{profile}` runs on the synthetic stand-ins: CUB-200 -> toybirds, NCT-CRC-HE -> toytissue,"
                " so published numbers are context, not targets.")


def table_note(profile: str, command: str) -> str:
    about = PROFILE_NOTES.get(profile, STANDIN_NOTE.format(profile=profile))
    return (f"Made by `{command}`. Published values: params/reference_numbers.yaml. "
            f"`fid_features` and `lpips_backbone` name the feature extractor and LPIPS network used; "
            f"`pretrained`, whether f started from ImageNet weights.{about}")
