"""Paper tables from results files: methods (or ablations) x metrics, best bold, arrows for direction.

A table is a YAML file (experiments/tables/*.yaml):

    title: Comparison on SynthTalk
    columns: [fid, fvd, sync_c, sync_d, csim, fps]      # or {key, header, better, fmt} entries
    rows:
      - name: Ours
        results: runs/eval/ours.json                   # a `lit-avatar eval` results file
        fps: 16.0                                      # optional; else results' aggregate "fps" or fps_from
        fps_from: runs/bench/stream.json               # optional JSON with a top-level "fps"
        exclude_from_best: false                       # e.g. true for a ground-truth row
    interval_suffix: _ci95       # optional: aggregate["<key>_ci95"] = [low, high] -> "mean ± half-width"
    differs_suffix: _differs     # optional: aggregate["<key>_differs"] true -> "†" (differs from the baseline)
        commands:                                      # run by `--run` when `results` is missing
          - [lit-avatar, generate, ...]
          - [lit-avatar, eval, ...]
"""
from __future__ import annotations

import datetime as _dt
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eval.inputs import read_json_object
from lit_avatar.data.atomic import write_text_atomic
from lit_avatar.errors import UserError, existing_file


@dataclass(frozen=True)
class Column:
    """A metric column: results key, header, which direction is better, number format."""

    key: str
    header: str
    better: str  # "lower" | "higher"
    fmt: str = ".2f"

    @property
    def arrow(self) -> str:
        return "↓" if self.better == "lower" else "↑"


KNOWN_COLUMNS = {
    "fid": Column("fid", "FID", "lower", ".2f"),
    "fvd": Column("fvd", "FVD", "lower", ".1f"),
    "sync_c": Column("sync_c", "Sync-C", "higher", ".2f"),
    "sync_d": Column("sync_d", "Sync-D", "lower", ".2f"),
    "csim": Column("csim", "CSIM", "higher", ".3f"),
    "fps": Column("fps", "FPS", "higher", ".1f"),
    "synthsync_r": Column("synthsync_r", "SynthSync r", "higher", ".3f"),
    "synthsync_best_r": Column("synthsync_best_r", "SynthSync best r", "higher", ".3f"),
    "drift_csim_slope_per_min": Column("drift_csim_slope_per_min", "CSIM drift/min", "higher", ".4f"),
    "drift_fid_slope_per_min": Column("drift_fid_slope_per_min", "FID drift/min", "lower", ".2f"),
    "drift_sync_c_slope_per_min": Column("drift_sync_c_slope_per_min", "Sync-C drift/min", "higher", ".3f"),
}


def _load_yaml(path: Path) -> dict:
    import yaml

    existing_file(path, "a table YAML (experiments/tables/NAME.yaml)", "--config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise UserError(f"--config {path}: expected a mapping with a non-empty 'rows' list")
    return data


def parse_columns(spec, config: Path) -> list[Column]:
    """Columns from the YAML: known names or {key, header, better, fmt} mappings."""
    cols = []
    for item in spec or ["fid", "fvd", "sync_c", "sync_d", "csim", "fps"]:
        if isinstance(item, str):
            if item not in KNOWN_COLUMNS:
                raise UserError(f"{config}: columns: unknown column {item!r}; known: {', '.join(KNOWN_COLUMNS)} "
                                "(or give {key, header, better, fmt})")
            cols.append(KNOWN_COLUMNS[item])
        elif isinstance(item, dict) and "key" in item:
            base = KNOWN_COLUMNS.get(item["key"], Column(item["key"], item["key"], "higher"))
            better = item.get("better", base.better)
            if better not in ("lower", "higher"):
                raise UserError(f"{config}: columns: 'better' of {item['key']!r} must be 'lower' or 'higher'")
            cols.append(Column(item["key"], item.get("header", base.header), better, item.get("fmt", base.fmt)))
        else:
            raise UserError(f"{config}: columns: expected names or mappings with a 'key', got {item!r}")
    return cols


def _run_row(row: dict, config: Path) -> None:
    """Run a row's commands (list form, no shell) so that its results file appears."""
    commands = row.get("commands") or []
    if not commands:
        raise UserError(f"{config}: row {row.get('name')!r} has no results file {row['results']} "
                        "and no 'commands' to make it")
    for cmd in commands:
        if not (isinstance(cmd, list) and all(isinstance(a, (str, int, float)) for a in cmd)):
            raise UserError(f"{config}: row {row.get('name')!r}: each command must be a list of arguments, got {cmd!r}")
        argv = [str(a) for a in cmd]
        print("running: " + " ".join(argv))
        try:
            code = subprocess.run(argv, check=False).returncode
        except OSError as err:
            raise UserError(f"{config}: row {row.get('name')!r}: cannot run {argv[0]!r} ({err.strerror})") from None
        if code != 0:
            raise UserError(f"{config}: row {row.get('name')!r}: command {' '.join(argv)} exited with {code}")


def row_values(row: dict, columns: list[Column], config: Path, run: bool) -> dict[str, float | None]:
    """Metric values of one row from its results file (running its commands first with --run)."""
    if "name" not in row or "results" not in row:
        raise UserError(f"{config}: every row needs 'name' and 'results', got {row!r}")
    path = Path(row["results"])
    if not path.is_file():
        if not run:
            raise UserError(f"{path}: results file of row {row['name']!r} not found "
                            "(make it, or pass --run to run the row's commands)")
        _run_row(row, config)
        if not path.is_file():
            raise UserError(f"{path}: row {row['name']!r} commands ran but did not write this results file")
    agg = read_json_object(path, "results").get("aggregate", {})
    out: dict[str, float | None] = {}
    for col in columns:
        v = agg.get(col.key)
        if col.key == "fps":
            if "fps" in row:
                v = row["fps"]
            elif "fps_from" in row:
                v = read_json_object(Path(row["fps_from"]), "fps").get("fps")
        out[col.key] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    return out


def row_marks(row: dict, columns: list[Column], interval_suffix: str | None,
              differs_suffix: str | None) -> dict[str, str]:
    """Per column, what follows the value: " ± half-width" of its interval and "†" when it differs."""
    if not interval_suffix and not differs_suffix:
        return {c.key: "" for c in columns}
    agg = read_json_object(Path(row["results"]), "results").get("aggregate", {})
    marks = {}
    for c in columns:
        text = ""
        ci = agg.get(f"{c.key}{interval_suffix}") if interval_suffix else None
        if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci) \
                and ci[1] > ci[0]:
            text += f" ± {format(0.5 * (ci[1] - ci[0]), c.fmt)}"
        if differs_suffix and agg.get(f"{c.key}{differs_suffix}") is True:
            text += " †"
        marks[c.key] = text
    return marks


def best_rows(values: list[dict], columns: list[Column], eligible: list[bool]) -> dict[str, set[int]]:
    """Per column, the indices of rows holding the best value (ties all count)."""
    best: dict[str, set[int]] = {}
    for col in columns:
        cands = [(v[col.key], i) for i, v in enumerate(values) if eligible[i] and v[col.key] is not None]
        if not cands:
            best[col.key] = set()
            continue
        pick = min if col.better == "lower" else max
        target = pick(c[0] for c in cands)
        # compare at the printed precision so that "bold" agrees with what the reader sees
        best[col.key] = {i for x, i in cands if format(x, col.fmt) == format(target, col.fmt)}
    return best


def _cells(i: int, vals: dict, columns: list[Column], best: dict[str, set[int]], marks: list[dict] | None,
           missing: str, bold: Callable[[str], str], mark_text: Callable[[str], str] = str) -> list[str]:
    """Row i's cells: the formatted value (`missing` when absent), bold where best, then its interval mark."""
    cells = []
    for c in columns:
        v = vals[c.key]
        text = missing if v is None else format(v, c.fmt)
        text = bold(text) if i in best[c.key] else text
        cells.append(text + (mark_text(marks[i][c.key]) if marks and v is not None else ""))
    return cells


def render_markdown(title: str, names: list[str], values: list[dict], columns: list[Column],
                    best: dict[str, set[int]], footer: str, marks: list[dict] | None = None) -> str:
    head = "| Method | " + " | ".join(f"{c.header} {c.arrow}" for c in columns) + " |"
    rule = "|---|" + "|".join("---:" for _ in columns) + "|"
    lines = [f"### {title}", "", head, rule] if title else [head, rule]
    for i, (name, vals) in enumerate(zip(names, values)):
        cells = _cells(i, vals, columns, best, marks, "–", lambda t: f"**{t}**")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", footer, ""])


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def render_latex(title: str, names: list[str], values: list[dict], columns: list[Column],
                 best: dict[str, set[int]], footer: str, marks: list[dict] | None = None) -> str:
    arrows = {"lower": r"$\downarrow$", "higher": r"$\uparrow$"}
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             "Method & " + " & ".join(f"{_tex_escape(c.header)} {arrows[c.better]}" for c in columns) + r" \\",
             r"\midrule"]
    for i, (name, vals) in enumerate(zip(names, values)):
        cells = _cells(i, vals, columns, best, marks, "--", lambda t: rf"\textbf{{{t}}}",
                       lambda m: m.replace("±", r"$\pm$").replace("†", r"$^\dagger$"))
        lines.append(_tex_escape(name) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if title:
        lines.append(rf"\caption{{{_tex_escape(title)}}}")
    lines += [r"\end{table}", "% " + footer, ""]
    return "\n".join(lines)


def build_table(config: str, out: str, run: bool = False, command: str = "") -> str:
    """Read the YAML, collect every row's values, write Markdown (or LaTeX for .tex) atomically."""
    cfg_path = Path(config)
    cfg = _load_yaml(cfg_path)
    columns = parse_columns(cfg.get("columns"), cfg_path)
    rows = cfg["rows"]
    values = [row_values(r, columns, cfg_path, run) for r in rows]
    names = [str(r["name"]) for r in rows]
    eligible = [not r.get("exclude_from_best", False) for r in rows]
    best = best_rows(values, columns, eligible)
    interval_suffix, differs_suffix = cfg.get("interval_suffix"), cfg.get("differs_suffix")
    marks = [row_marks(r, columns, interval_suffix, differs_suffix) for r in rows]
    footer = f"Built by `{command or 'lit-avatar table --config ' + str(cfg_path)}` on {_dt.date.today().isoformat()}."
    if interval_suffix or differs_suffix:
        footer = ("Cells: mean ± half-width of the 95% interval over seeds; † the paired difference to the baseline "
                  "excludes 0. Bold: best mean. " + footer)
    title = str(cfg.get("title", ""))
    if str(out).endswith(".tex"):
        text = render_latex(title, names, values, columns, best, footer, marks)
    elif str(out).endswith((".md", ".markdown", ".txt")):
        text = render_markdown(title, names, values, columns, best, footer, marks)
    else:
        raise UserError(f"--out {out}: expected a .md or .tex file")
    write_text_atomic(out, text)
    return text
