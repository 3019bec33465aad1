"""Named settings (`variants:`) and paper tables (`tables:`) in a sweep file.

Tune's grid search is a product of keys; the seed's Tables 2-4 are not: Table 2 changes the labeler,
Table 3 only tau, Table 4 only the EMA. A sweep file therefore may name settings, each a set of
overrides on the base config, and sweep over the names (one grid dimension ``variant``); each setting
runs once per seed even when several tables show it (Base+PPL is Table 2's last row, Table 3's tau = 0.1
and Table 4's "w/ EMA")::

    variants:
      base: {ppl.labeler: none}
      ppl: {}                               # the base config itself
      no_ema: {ppl.ema_decay: none}
    tables:
      - title: "Table 4: momentum encoder"
        rows: {"w/o EMA": no_ema, "w/ EMA": ppl}

``ppl-avvp compare --sweep NAME`` then prints each table in this row order, mean ± std over seeds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed.common.config import flatten_tree, parse_overrides, set_dotted
from distributed.common.errors import ConfigError

VARIANT_KEY = "variant"
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass
class Table:
    title: str
    rows: list[tuple[str, str]]          # (row label, variant name), in print order


def parse_variants(path: Path, value: Any, forbidden: dict[str, str]) -> dict[str, dict]:
    """``variants:`` -> {name: override tree}; each setting a {key: value} mapping or a key=value list."""
    where = f"{path}: variants"
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping of name -> {{config key: value}}, got {value!r}")
    variants = {}
    for name, setting in value.items():
        if not isinstance(name, str) or not VARIANT_NAME.match(name):
            raise ConfigError(f"{where}: name {name!r}: use letters, digits, '.', '_', '+' or '-'")
        if setting is None:
            setting = {}
        if isinstance(setting, list) and all(isinstance(s, str) for s in setting):
            tree = parse_overrides(setting)
        elif isinstance(setting, dict):
            tree = {}
            for key, item in setting.items():
                set_dotted(tree, str(key), item)
        else:
            raise ConfigError(f"{where}.{name}: expected a mapping of config key -> value, got {setting!r}")
        for key in flatten_tree(tree):
            if key in forbidden:
                raise ConfigError(f"{where}.{name}: {key} is set by the sweep ({forbidden[key]})")
        variants[name] = tree
    return variants


def parse_tables(path: Path, value: Any, variants: dict[str, dict]) -> list[Table]:
    """``tables:`` -> [Table]; every row must name a variant."""
    where = f"{path}: tables"
    if value is None:
        return []
    if not variants:
        raise ConfigError(f"{where}: rows name variants, and the file has no variants:")
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {{title, rows}}, got {value!r}")
    tables = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"title", "rows"} or not isinstance(item.get("rows"), dict):
            raise ConfigError(f"{where}[{i}]: expected {{title: ..., rows: {{label: variant}}}}, got {item!r}")
        rows = []
        for label, name in item["rows"].items():
            if name not in variants:
                raise ConfigError(f"{where}[{i}].rows.{label}: unknown variant {name!r}; "
                                  f"variants: {', '.join(variants)}")
            rows.append((str(label), name))
        tables.append(Table(str(item.get("title") or f"table {i + 1}"), rows))
    return tables


def apply_variant(tree: dict, variants: dict[str, dict], name: str) -> None:
    """Set one named setting's overrides into a config tree (in place)."""
    if name not in variants:
        raise ConfigError(f"variant: unknown setting {name!r}; variants: {', '.join(variants)}")
    for key, value in flatten_tree(variants[name]).items():
        set_dotted(tree, key, value)
