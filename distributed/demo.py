"""`make demo`: synthesise a small LLP-shaped dataset, shard it, train Base and PPL on 2 Ray Train
workers with DeepSpeed, log both to MLflow, and print Base vs PPL on test. Needs no LLP files."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from distributed.common.commandline import OneLineParser, run_command

# Both runs use the shipped `ppl` preset; PPL keeps its EMA teacher (0.999 with the decay warm-up of
# model/momentum.py, which makes it usable in a run of a few hundred steps).
DEMO_OVERRIDES = {
    "base": ["ppl.labeler=none"],
    "ppl": ["ppl.labeler=ppl_soft"],
}


def parse_args(argv):
    parser = OneLineParser(prog="python -m distributed.demo", description=__doc__)
    parser.add_argument("--out", default="demo", help="folder for data, shards, runs and the MLflow store")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    data = out / "data"
    shards = out / "shards"
    started = time.perf_counter()
    if not (data / "synth.json").exists():
        from distributed.data.synth import generate
        print(f"[1/3] synthesising {args.train}/{args.val}/{args.test} LLP-layout videos into {data}", flush=True)
        generate(data, n_train=args.train, n_val=args.val, n_test=args.test, seed=args.seed, overwrite=True)
    if not (shards / "test" / "manifest.json").exists():
        from distributed.data.shards import write_shards
        print(f"[2/3] writing WebDataset shards into {shards}", flush=True)
        per_shard = max(8, args.train // (4 * args.workers))
        for split in ("train", "val", "test"):
            write_shards(data / "features", data / "annotations", split, shards / split,
                         videos_per_shard=per_shard, overwrite=True)
    from distributed.common.config import load_config
    from distributed.evaluate import format_table
    from distributed.train import train

    results = {}
    store = f"sqlite:///{out / 'runs' / 'mlflow.db'}"     # the demo keeps its own store under --out
    for name, overrides in DEMO_OVERRIDES.items():
        print(f"[3/3] training {name} on {args.workers} Ray Train workers with DeepSpeed", flush=True)
        cfg = load_config("ppl", [
            f"name=demo-{name}", f"output_dir={out / 'runs' / name}", f"seed={args.seed}",
            f"data.shards={shards}", f"optim.epochs={args.epochs}", f"data.batch_size={args.batch_size}",
            f"distributed.num_workers={args.workers}", "distributed.engine=deepspeed",
            f"tracking.experiment=ppl-avvp-demo", f"tracking.tracking_uri={store}", *overrides])
        results[name] = train(cfg, resume=True)   # a rerun of the demo continues (or re-reports) its runs
    print()
    for name, res in results.items():
        print(format_table(res["test"], title=f"{name} (test, best val epoch {res['best_epoch']})"))
        print()
    deltas = {k: results["ppl"]["test"][k] - results["base"]["test"][k] for k in results["base"]["test"]}
    print("PPL - Base: " + "  ".join(f"{k} {v:+.1f}" for k, v in deltas.items()))
    print(f"\ndemo took {time.perf_counter() - started:.0f} s. Browse the runs with:\n"
          f"  {sys.executable.rsplit('/', 1)[0]}/mlflow ui --backend-store-uri {store}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
