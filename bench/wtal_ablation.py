"""Base (MIL only) vs PPL on W-TAL data (printed, never asserted): `--config thumos14` runs in process, one per
(variant, seed), then mAP@[0.1:0.5] and mAP@[0.1:0.7] of the last and the best-on-test epoch, mean ± std.

    ppl-avvp wtal synth --out demo/wtal --train 200 --test 60 --dim 64 --signal 5
    OMP_NUM_THREADS=1 python bench/wtal_ablation.py --data demo/wtal --out demo/wtal-runs --seeds 0,1,2 \
        --set model.rgb_dim=64 model.flow_dim=64 model.model_dim=64 model.han_ffn_dim=128 data.batch_size=8 \
              optim.epochs=20 optim.lr=1e-3 data.train_snippets=64
    python bench/wtal_ablation.py --out demo/wtal-runs --collect      # only read the runs' results.json

Variants: base = ppl.labeler=none; ppl = the preset's ppl_soft; more as NAME:key=value,key=value (--variant).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"base": ["ppl.labeler=none"], "ppl": []}
KEYS = ("map_avg_0.1_0.5", "map_avg_0.1_0.7")


def run(data: str, out: Path, name: str, seed: int, overrides: list[str]) -> None:
    from distributed.common.config import load_config
    from distributed.train import train

    cfg = load_config("thumos14", [f"data.annotations={data}/annotations", f"data.features={data}/features",
                                   "distributed.num_workers=0", "distributed.engine=torch", f"seed={seed}",
                                   f"output_dir={out / f'{name}_s{seed}'}", f"name={name}", *overrides])
    train(cfg, mlflow=False)


def collect(out: Path) -> dict[str, dict[str, list[float]]]:
    table: dict[str, dict[str, list[float]]] = {}
    for path in sorted(out.glob("*_s*/results.json")):
        name = path.parent.name.rsplit("_s", 1)[0]
        results = json.loads(path.read_text())
        for row in results["rows"]:
            for key in KEYS:
                table.setdefault(name, {}).setdefault(f"{row['selection']} {key}", []).append(row["test"][key])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="base,ppl")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    p.add_argument("--collect", action="store_true", help="only summarise the runs already in --out")
    args = p.parse_args()
    out = Path(args.out)
    variants = {k: VARIANTS[k] for k in args.variants.split(",") if k}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        variants[name] = [s for s in sets.split(",") if s]
    if not args.collect:
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, overrides in variants.items():
                run(args.data, out, name, seed, [*args.set, *overrides])
    for name, columns in collect(out).items():
        cells = [f"{col} {np.mean(v):5.2f} ± {np.std(v):4.2f} (n={len(v)})" for col, v in columns.items()]
        print(f"{name:<14} " + "   ".join(cells))


if __name__ == "__main__":
    main()
