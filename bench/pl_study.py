"""Per epoch, per modality: the pseudo-labels' F1 against dense truth next to the model's own, and val Type@AV.

Where PL-F1 falls below the model's own F1 a run trains on labels worse than its predictions (confirmation
bias); where val drops after the best epoch while PL-F1 keeps rising, the pseudo-labels are not the cause.
Reads the `results.json` (its `history`) of finished runs: a sweep's trial folders or any output_dir.
Usage:
    python bench/pl_study.py runs/sweeps/seed-tables [--variant ppl]     # every trial of the sweep (or one setting)
    python bench/pl_study.py path/to/output_dir [...]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

COLUMNS = ("val_seg_type", "val_seg_a", "val_seg_v", "pl_f1_a", "pl_model_f1_a", "pl_f1_v", "pl_model_f1_v")


def find_runs(paths: list[Path], variant: str | None) -> list[tuple[str, dict]]:
    runs = []
    for path in paths:
        files = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.glob("*/train/results.json"))
        for file in files:
            label = file.parent.parent.name if file.parent.name == "train" else file.parent.name
            match = re.search(r"variant=(.+?)_seed=(\d+)", label)
            if variant and not (match and match.group(1) == variant):
                continue
            runs.append((f"{match.group(1)} seed {match.group(2)}" if match else label, json.loads(file.read_text())))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--variant", help="only the trials of this sweep setting")
    args = parser.parse_args()
    runs = find_runs(args.paths, args.variant)
    if not runs:
        raise SystemExit(f"{', '.join(map(str, args.paths))}: no results.json found")
    for label, result in runs:
        history = result["history"]
        best = result["best_epoch"]
        print(f"\n{label}: best val epoch {best} of {len(history)}; largest drop after it: "
              f"{max([history[best - 1]['val_seg_type'] - h['val_seg_type'] for h in history[best:]], default=0):.1f}")
        print(f"{'epoch':>5}" + "".join(f"{c:>15}" for c in COLUMNS))
        for h in history:
            print(f"{h['epoch']:>5}" + "".join(f"{h[c]:>15.1f}" if c in h else f"{'-':>15}" for c in COLUMNS))


if __name__ == "__main__":
    main()
