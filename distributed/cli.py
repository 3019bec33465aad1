"""`ppl-avvp` console script: dispatches to the recipe modules.

Each command lives in its own module with ``main(argv) -> int`` so that
``python -m <module>`` (what ``ray job submit`` runs) and ``ppl-avvp <command>`` are one code path.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from distributed.common.commandline import run_command

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("distributed.synth", "write a synthetic LLP-layout dataset (annotations + features)"),
    "train": ("distributed.train", "train Base or PPL from a config file plus key=value overrides"),
    "evaluate": ("distributed.evaluate", "score predictions or a checkpoint with the LLP protocol"),
    "predict": ("distributed.predict", "per-video events as JSON plus timeline pictures"),
    "wtal": ("distributed.wtal", "THUMOS14-style W-TAL data: synthetic generator, one-off feature conversion, shards"),
    "extract": ("distributed.extract.command", "features from raw videos: LLP layout or shards (Ray Data)"),
    "shard": ("distributed.shards", "write / verify WebDataset shards of an LLP-layout dataset"),
    "sweep": ("tune.sweep", "Ray Tune sweep over any config key (tau, EMA decay, seeds, ...)"),
    "compare": ("tune.compare", "compare MLflow runs as a paper-style table"),
    "submit": ("tune.submit", "submit a cluster recipe with `ray job submit`"),
}


def _usage() -> str:
    lines = ["usage: ppl-avvp <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`ppl-avvp <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ppl-avvp: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_command(module.main, rest, prog=f"ppl-avvp {name}")


if __name__ == "__main__":
    sys.exit(main())
