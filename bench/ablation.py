"""Base vs PPL variants on one synthetic (or real-feature) LLP-layout dataset, in one process.

Prints val/test segment & event Type@AV and the pseudo-label quality per variant, so the design
choices of DESIGN §3.4.1 are compared with numbers, not assumed. Usage:
    python bench/ablation.py --data DIR [--epochs 8] [--variants base,ppl_soft,...] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.config import load_config  # noqa: E402
from distributed.train import train  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "base": ["ppl.labeler=none"],
    "pl": ["ppl.labeler=pl"],
    "ppl_soft_across": ["ppl.labeler=ppl_soft", "ppl.competition=across_classes"],
    "ppl_soft": ["ppl.labeler=ppl_soft", "ppl.competition=per_class"],
    "ppl_hard": ["ppl.labeler=ppl_hard", "ppl.competition=per_class"],
    "ppl_soft_gated": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.confidence_gate=0.8"],
    "ppl_neg": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.background=negatives"],
    "ppl_neg_hard": ["ppl.labeler=ppl_hard", "ppl.competition=per_class", "ppl.background=negatives"],
    "ppl_soft_noema": ["ppl.labeler=ppl_soft", "ppl.competition=per_class", "ppl.ema_decay=none"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder with annotations/ and features/")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variants", default="base,ppl_soft")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every variant")
    args = parser.parse_args()
    data = Path(args.data)
    rows = []
    for name in args.variants.split(","):
        started = time.perf_counter()
        cfg = load_config("ppl", [f"data.annotations={data / 'annotations'}", f"data.features={data / 'features'}",
                                  f"output_dir={Path(args.out) / name}", "distributed.num_workers=0",
                                  "distributed.engine=torch", f"optim.epochs={args.epochs}", f"name={name}",
                                  "tracking.mlflow=false", *VARIANTS[name], *args.set])
        res = train(cfg, mlflow=False)
        last = res["history"][-1]
        best = res["history"][res["best_epoch"] - 1]
        rows.append((name, res["val"].get("seg_type", float("nan")), res["test"]["seg_type"], res["test"]["evt_type"],
                     res["test"]["seg_a"], res["test"]["seg_v"], res["test"]["seg_av"], best.get("pl_f1", float("nan")),
                     best.get("pl_model_f1", float("nan")), last.get("pl_background_share", float("nan")),
                     res["best_epoch"], time.perf_counter() - started))
        print(json.dumps({"variant": name, "test": res["test"]}), flush=True)
    print(f"\n{'variant':<18}{'val seg':>8}{'test seg':>9}{'test evt':>9}{'seg A':>7}{'seg V':>7}{'seg AV':>7}"
          f"{'PL-F1':>7}{'mdl-F1':>7}{'bg%':>6}{'best':>5}{'s':>6}")
    for r in rows:
        print(f"{r[0]:<18}" + "".join(f"{v:>{w}.1f}" for v, w in zip(r[1:10], (8, 9, 9, 7, 7, 7, 7, 7, 6)))
              + f"{r[10]:>5}{r[11]:>6.0f}")


if __name__ == "__main__":
    main()
