"""`ppl-avvp compare` / `python -m tune.compare`: MLflow runs as a paper-style table (seed Tables 3/4).

    ppl-avvp compare --sweep NAME [--storage DIR]      # the child runs of a sweep's parent run
    ppl-avvp compare --experiment NAME                 # every finished run of an MLflow experiment
    ppl-avvp compare --runs ID,ID,...                  # these runs
        [--group-by key,key] [--split test|val] [--out DIR] [--tracking-uri URI] [--no-plots]

Rows are settings (runs grouped by the swept keys; by default the keys a sweep swept, or the params
that vary among the runs, ignoring seed, output_dir and tracking.*), columns the ten LLP numbers:
the final ``test_<key>`` metrics, or with ``--split val`` the ``val_<key>`` metrics of each run's best
epoch (the first epoch with the highest val_seg_type, as the training loop picks it). Cells are
``mean ± std`` over the runs of a setting (sample std, n >= 2; just the mean for one run); ``*``
marks the best mean per column. Writes comparison.{txt,csv,md} and PNG plots (metrics vs tau when
ppl.tau varies, with/without EMA bars when ppl.ema_decay varies, val_seg_type learning curves) into
--out, and, for a sweep, logs them as artifacts (``compare/``) of the sweep's parent run.

Tracking URI: --tracking-uri, else the sweep's sweep_state.json, else the store `ppl-avvp train` and
`ppl-avvp sweep` log to by default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.common.commandline import OneLineParser, run_command
from distributed.common.errors import UserError
from distributed.runtime.tracking import default_tracking_uri, mlflow_client
from model.metrics import SCORE_KEYS
from tune.spaces import default_storage, format_value, short_names

STATE_FILE = "sweep_state.json"
EXCLUDED_PARAMS = {"seed", "output_dir", "tracking.run_name", "tracking.parent_run_id", "tracking.tracking_uri",
                   "tracking.experiment", "tracking.mlflow", "distributed.ray_address"}
COLUMN_NAMES = {"a": "A", "v": "V", "av": "AV", "type": "Type", "event": "Event"}
LEVEL_NAMES = {"seg": "Segment", "evt": "Event"}
CURVE_METRIC = "val_seg_type"


@dataclass
class RunRecord:
    run_id: str
    name: str
    params: dict[str, str]
    scores: dict[str, float]
    curve: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Row:
    setting: dict[str, str]
    label: str
    records: list[RunRecord]
    mean: dict[str, float]
    std: dict[str, float | None]

    @property
    def n(self) -> int:
        return len(self.records)


@dataclass
class Comparison:
    title: str
    split: str
    group_keys: list[str]
    rows: list[Row]
    best: dict[str, set[int]]
    skipped: list[str]
    table: str
    files: dict[str, Path] = field(default_factory=dict)
    parent_run_id: str | None = None


# ---------------------------------------------------------------------------------------------
# where the runs are
# ---------------------------------------------------------------------------------------------

def read_state(experiment_dir: Path) -> dict | None:
    path = experiment_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def _search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent_run(client, sweep: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = _search_all(client, experiments, f"tags.`ppl_avvp.sweep` = '{sweep}' and tags.`ppl_avvp.role` = 'sweep'")
    if not runs:
        raise UserError(f"no sweep named {sweep!r} in {client.tracking_uri}")
    return max(runs, key=lambda r: r.info.start_time or 0)


def sweep_child_runs(client, parent_run_id: str, finished_only: bool = True) -> list:
    """A sweep's trial runs; one per trial folder (the latest when a trial was restarted)."""
    parent = client.get_run(parent_run_id)
    runs = _search_all(client, [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    if finished_only:
        runs = [r for r in runs if r.info.status == "FINISHED"]
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        latest[run.data.params.get("output_dir", run.info.run_id)] = run
    return list(latest.values())


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------

def _history(client, run_id: str, key: str) -> dict[int, float]:
    out: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in out or m.timestamp >= out[m.step][0]:
            out[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in sorted(out.items())}


def load_record(client, run, split: str) -> tuple[RunRecord | None, str]:
    """A run's ten numbers of the split (None + reason when it has none) and its learning curve."""
    curve = _history(client, run.info.run_id, CURVE_METRIC)
    name = run.data.tags.get("mlflow.runName", run.info.run_id)
    if split == "test":
        scores = {k: run.data.metrics.get(f"test_{k}") for k in SCORE_KEYS}
        missing = [k for k, v in scores.items() if v is None]
        if missing:
            return None, f"{name} ({run.info.run_id}): no test_{missing[0]} metric (unfinished or stopped run)"
    else:
        if not curve:
            return None, f"{name} ({run.info.run_id}): no {CURVE_METRIC} history"
        best_value = max(curve.values())
        best_step = min(step for step, v in curve.items() if v == best_value)
        scores = {}
        for key in SCORE_KEYS:
            history = curve if key == "seg_type" else _history(client, run.info.run_id, f"val_{key}")
            if best_step not in history:
                return None, f"{name} ({run.info.run_id}): no val_{key} at epoch {best_step}"
            scores[key] = history[best_step]
    params = dict(run.data.params)
    point = run.data.tags.get("ppl_avvp.point")
    if point:          # a sweep's named setting (variant) is in its point, not in the config
        for key, value in json.loads(point).items():
            params.setdefault(key, format_value(value))
    return RunRecord(run.info.run_id, name, params, scores, sorted(curve.items())), ""


def varying_params(records: list[RunRecord]) -> list[str]:
    keys = sorted({k for r in records for k in r.params} - EXCLUDED_PARAMS)
    return [k for k in keys if len({r.params.get(k) for r in records}) > 1]


def _sort_key(value: str):
    if value in ("none", "None", "-"):
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def _label(setting: dict[str, str]) -> str:
    if not setting:
        return "all runs"
    names = short_names(list(setting))
    return " ".join(f"{names[k]}={v}" for k, v in setting.items())


def group_records(records: list[RunRecord], keys: list[str]) -> list[Row]:
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(tuple(record.params.get(k, "-") for k in keys), []).append(record)
    rows = []
    for values in sorted(groups, key=lambda vs: [_sort_key(v) for v in vs]):
        members = groups[values]
        mean, std = {}, {}
        for key in SCORE_KEYS:
            xs = [r.scores[key] for r in members]
            mu = sum(xs) / len(xs)
            mean[key] = mu
            std[key] = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        setting = dict(zip(keys, values))
        rows.append(Row(setting, _label(setting), members, mean, std))
    return rows


def best_rows(rows: list[Row]) -> dict[str, set[int]]:
    if len(rows) < 2:
        return {k: set() for k in SCORE_KEYS}
    out = {}
    for key in SCORE_KEYS:
        top = max(r.mean[key] for r in rows)
        out[key] = {i for i, r in enumerate(rows) if r.mean[key] >= top - 1e-9}
    return out


def _cell(row: Row, key: str, best: bool, star: str = "*") -> str:
    text = f"{row.mean[key]:.1f}"
    if row.std[key] is not None:
        text += f" ± {row.std[key]:.1f}"
    return text + (star if best else "")


def paper_tables(rows: list[Row], tables_param: str | None, split: str) -> list[tuple[str, list[Row]]]:
    """The sweep file's ``tables:`` (the parent run's ``sweep.tables`` param): each table's rows, relabelled,
    in the file's order, from the rows grouped by variant. A row whose variant has no finished run is left out."""
    if not tables_param:
        return []
    by_variant = {r.setting.get("variant"): r for r in rows}
    out = []
    for table in json.loads(tables_param):
        picked = [Row(r.setting, label, r.records, r.mean, r.std)
                  for label, name in table["rows"].items() if (r := by_variant.get(name)) is not None]
        if picked:
            out.append((f"{table.get('title', 'table')} ({split}, F1 %)", picked))
    return out


def format_comparison(rows: list[Row], best: dict[str, set[int]], title: str) -> str:
    """Rows = settings; Segment-level | Event-level, each A V AV Type Event (seed Table 4's layout)."""
    cells = [[_cell(r, k, i in best[k]) for k in SCORE_KEYS] for i, r in enumerate(rows)]
    heads = [COLUMN_NAMES[k.split("_", 1)[1]] for k in SCORE_KEYS]
    widths = [max([len(h)] + [len(c[j]) for c in cells]) for j, h in enumerate(heads)]
    label_w = max([len("setting")] + [len(r.label) for r in rows])
    n_w = max([1] + [len(str(r.n)) for r in rows])

    def line(label: str, n: str, cols: list[str]) -> str:
        seg = "  ".join(f"{c:>{widths[j]}}" for j, c in enumerate(cols[:5]))
        evt = "  ".join(f"{c:>{widths[j + 5]}}" for j, c in enumerate(cols[5:]))
        return f"{label:<{label_w}}  {n:>{n_w}}  {seg} | {evt}"

    seg_w = sum(widths[:5]) + 8
    evt_w = sum(widths[5:]) + 8
    spans = " " * (label_w + n_w + 4) + f"{'Segment-level':^{seg_w}} | {'Event-level':^{evt_w}}"
    lines = [title, spans.rstrip(), line("setting", "n", heads)]
    lines += [line(r.label, str(r.n), cs) for r, cs in zip(rows, cells)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------

def write_csv(rows: list[Row], keys: list[str], split: str, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*keys, "setting", "split", "n", "run_ids",
                         *(f"{k}_{s}" for k in SCORE_KEYS for s in ("mean", "std"))])
        for row in rows:
            values = []
            for key in SCORE_KEYS:
                values += [repr(row.mean[key]), "" if row.std[key] is None else repr(row.std[key])]
            writer.writerow([*(row.setting[k] for k in keys), row.label, split, row.n,
                             ";".join(r.run_id for r in row.records), *values])


def write_markdown(rows: list[Row], best: dict[str, set[int]], title: str, path: Path) -> None:
    heads = [f"{k.split('_')[0].capitalize()} {COLUMN_NAMES[k.split('_', 1)[1]]}" for k in SCORE_KEYS]
    lines = [f"**{title}**", "", "| setting | n | " + " | ".join(heads) + " |",
             "|---|---:|" + "---:|" * len(SCORE_KEYS)]
    for i, row in enumerate(rows):
        cells = [_cell(row, k, i in best[k], star="\\*") for k in SCORE_KEYS]
        lines.append(f"| {row.label} | {row.n} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _metric_title(key: str) -> str:
    level, col = key.split("_", 1)
    return f"{LEVEL_NAMES[level]} {COLUMN_NAMES[col]}"


def _others(rows: list[Row], key: str) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = {}
    for row in rows:
        out.setdefault(tuple((k, v) for k, v in row.setting.items() if k != key), []).append(row)
    return out


def plot_tau(rows: list[Row], split: str, path: Path, key: str = "ppl.tau") -> bool:
    values = {r.setting.get(key) for r in rows}
    try:
        numeric = {float(v) for v in values}
    except (TypeError, ValueError):
        return False
    if len(numeric) < 2:
        return False
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(18, 7), sharex=True)
    for (other, members) in _others(rows, key).items():
        members = sorted(members, key=lambda r: float(r.setting[key]))
        label = _label(dict(other)) if other else None
        xs = [float(r.setting[key]) for r in members]
        for ax, metric in zip(axes.flat, SCORE_KEYS):
            errors = [r.std[metric] for r in members]
            ax.errorbar(xs, [r.mean[metric] for r in members], marker="o", capsize=3, label=label,
                        yerr=[e or 0.0 for e in errors] if any(e is not None for e in errors) else None)
    for ax, metric in zip(axes.flat, SCORE_KEYS):
        ax.set_title(_metric_title(metric))
        ax.set_xlabel("τ")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(f"{split} F1 (%)")
    axes.flat[5].set_ylabel(f"{split} F1 (%)")
    if any(other for other in _others(rows, key)):
        axes.flat[0].legend(fontsize=7)
    spread = " (mean ± std over seeds)" if any(r.n > 1 for r in rows) else ""
    fig.suptitle(f"{split} metrics vs temperature τ{spread}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_ema(rows: list[Row], split: str, path: Path, key: str = "ppl.ema_decay", max_panels: int = 6) -> bool:
    if len({r.setting.get(key) for r in rows}) < 2:
        return False
    import matplotlib.pyplot as plt
    import numpy as np

    panels = list(_others(rows, key).items())[:max_panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.6 * len(panels)), squeeze=False)
    x = np.arange(len(SCORE_KEYS))
    for ax, (other, members) in zip(axes[:, 0], panels):
        members = sorted(members, key=lambda r: _sort_key(r.setting[key]))
        width = 0.8 / len(members)
        for i, row in enumerate(members):
            value = row.setting[key]
            label = "without EMA" if value in ("none", "None") else f"EMA {value}"
            errors = [row.std[m] for m in SCORE_KEYS]
            ax.bar(x + (i - (len(members) - 1) / 2) * width, [row.mean[m] for m in SCORE_KEYS], width,
                   yerr=[e or 0.0 for e in errors] if row.n > 1 else None, capsize=2, label=label)
        ax.set_xticks(x, [_metric_title(m) for m in SCORE_KEYS], fontsize=8)
        ax.set_ylabel(f"{split} F1 (%)")
        ax.set_title(_label(dict(other)) if other else "with / without momentum encoder")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_curves(rows: list[Row], path: Path) -> bool:
    if not any(r.curve for row in rows for r in row.records):
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows):
        for j, record in enumerate(row.records):
            if record.curve:
                steps, values = zip(*record.curve)
                ax.plot(steps, values, marker="o", color=colors[i % len(colors)], alpha=0.8,
                        label=row.label if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val Segment Type@AV F1 (%)")
    ax.set_title("learning curves (val_seg_type per epoch, one line per run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def run_compare(*, tracking_uri: str | None = None, sweep: str | None = None, parent_run_id: str | None = None,
                experiment: str | None = None, run_ids: Sequence[str] | None = None, storage: str | Path | None = None,
                group_by: Sequence[str] | None = None, split: str = "test", out_dir: str | Path | None = None,
                plots: bool = True, log_artifacts: bool = True, echo: bool = True) -> Comparison:
    """Collect the runs, group them, write table/CSV/Markdown/plots; returns everything."""
    if split not in ("test", "val"):
        raise UserError(f"--split: expected test or val, got {split!r}")
    if sum(x is not None for x in (sweep or parent_run_id, experiment, run_ids)) != 1:
        raise UserError("name exactly one of --sweep, --experiment or --runs")
    label, default_out, swept_keys = "runs", Path.cwd() / "runs" / "compare" / "runs", None
    if sweep:
        experiment_dir = Path(storage).resolve() / sweep if storage else default_storage() / sweep
        state = read_state(experiment_dir)
        if state:
            default_out = experiment_dir / "compare"
            parent_run_id = parent_run_id or state["parent_run_id"]
            tracking_uri = tracking_uri or state["tracking_uri"]
        else:
            default_out = Path.cwd() / "runs" / "compare" / sweep
    client = mlflow_client(tracking_uri or default_tracking_uri(), create=False)
    if sweep or parent_run_id:
        if not parent_run_id:
            parent_run_id = find_parent_run(client, sweep).info.run_id
        try:
            parent = client.get_run(parent_run_id)
        except Exception as err:   # mlflow raises MlflowException (RESOURCE_DOES_NOT_EXIST)
            raise UserError(f"sweep parent run {parent_run_id} not found in {client.tracking_uri}: "
                            f"{str(err).splitlines()[0]}") from None
        label = sweep or parent.data.tags.get("ppl_avvp.sweep") or parent_run_id
        if not sweep:
            default_out = Path(parent.data.tags.get("ppl_avvp.storage", Path.cwd() / "runs" / "compare" / label))
            default_out = default_out / "compare" if parent.data.tags.get("ppl_avvp.storage") else default_out
        keys_tag = parent.data.tags.get("ppl_avvp.swept_keys")
        swept_keys = [k for k in keys_tag.split(",") if k] if keys_tag else None
        runs = sweep_child_runs(client, parent_run_id)
        title = f"sweep {label}"
    elif experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UserError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
        runs = [r for r in _search_all(client, [exp.experiment_id], "attributes.status = 'FINISHED'")
                if r.data.tags.get("ppl_avvp.role") != "sweep"]
        label, title = experiment, f"experiment {experiment}"
        default_out = Path.cwd() / "runs" / "compare" / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    else:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception as err:
                raise UserError(f"--runs: run {run_id} not found in {client.tracking_uri}: "
                                f"{str(err).splitlines()[0]}") from None
        title = f"{len(runs)} runs"

    records, skipped = [], []
    for run in runs:
        record, reason = load_record(client, run, split)
        if record is None:
            skipped.append(reason)
        else:
            records.append(record)
    if not records:
        raise UserError(f"{title}: no finished run with {split} metrics"
                        + (f" ({len(skipped)} skipped: {skipped[0]})" if skipped else ""))

    if group_by:
        known = sorted({k for r in records for k in r.params})
        for key in group_by:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(f"--group-by: {key!r} is not a param of these runs{hint}")
        keys = list(group_by)
    elif swept_keys is not None:
        keys = swept_keys
    else:
        keys = varying_params(records)
    rows = group_records(records, keys)
    best = best_rows(rows)
    n_max = max(r.n for r in rows)
    title = (f"{title}: {split} F1 (%), " + ("mean ± std over seeds" if n_max > 1 else "one run per setting")
             + ("; * best per column" if len(rows) > 1 else ""))
    table = format_comparison(rows, best, title)
    if parent_run_id and "variant" in keys:
        for table_title, table_rows in paper_tables(rows, parent.data.params.get("sweep.tables"), split):
            table += "\n\n" + format_comparison(table_rows, best_rows(table_rows), table_title)
    comparison = Comparison(title, split, keys, rows, best, skipped, table, parent_run_id=parent_run_id)

    out = Path(out_dir) if out_dir else default_out
    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "comparison.txt", "csv": out / "comparison.csv", "markdown": out / "comparison.md"}
    files["table"].write_text(table + "\n")
    write_csv(rows, keys, split, files["csv"])
    write_markdown(rows, best, title, files["markdown"])
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        for name, make in (("tau", lambda p: "ppl.tau" in keys and plot_tau(rows, split, p)),
                           ("ema", lambda p: "ppl.ema_decay" in keys and plot_ema(rows, split, p)),
                           ("curves", lambda p: plot_curves(rows, p))):
            path = out / f"{name}.png"
            if make(path):
                files[name] = path
    comparison.files = files
    if parent_run_id and log_artifacts:
        for path in files.values():
            client.log_artifact(parent_run_id, str(path), "compare")

    if echo:
        print(table)
        for reason in skipped:
            print(f"skipped: {reason}")
        print("wrote: " + ", ".join(str(p) for p in files.values()))
    return comparison


def parse_args(argv):
    parser = OneLineParser(prog="ppl-avvp compare", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", help="sweep name (its parent run's children)")
    source.add_argument("--experiment", help="MLflow experiment name (all its finished runs)")
    source.add_argument("--runs", help="comma-separated MLflow run ids")
    parser.add_argument("--group-by", help="comma-separated param keys (default: swept / varying keys)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--out", help="folder for comparison.{txt,csv,md} and plots")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI")
    parser.add_argument("--storage", help="sweeps folder (default <cwd>/runs/sweeps) for --sweep")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run_compare(tracking_uri=args.tracking_uri, sweep=args.sweep, experiment=args.experiment,
                run_ids=[r for r in args.runs.split(",") if r] if args.runs else None, storage=args.storage,
                group_by=[k for k in args.group_by.split(",") if k] if args.group_by else None,
                split=args.split, out_dir=args.out, plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
