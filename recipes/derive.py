#!/usr/bin/env python
"""Write the derived recipes from the five base recipes of Tables 1-2 (recipes/<dataset>.yaml):

- ``recipes/table3/<dataset>-<variant>.yaml``: each ablation variant of paper Table 3 (only-I for MSA only);
- ``recipes/sensitivity/<dataset>-<theta|mu|eta><value>.yaml``: each point of the Figure 4 sweeps except the
  default one, which is the base recipe itself.

A derived recipe is its base recipe with a new header, its own ``output_dir`` and the one changed value, so that every
file reads on its own (``accelerate launch run_mner.py recipes/table3/twitter2017-only_t.yaml``). Edit a base recipe
or this script, never a derived file, then run:

    python recipes/derive.py            # rewrite recipes/table3/ and recipes/sensitivity/
    python recipes/derive.py --check    # only compare; exit 1 if a derived recipe is missing, stale or extra
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from configuration_muse import ABLATION_VARIANTS
from muse_training.paper import DATASETS, SWEEPS, TABLE3_F1, VARIANT_TITLES

RECIPES = Path(__file__).resolve().parent
DERIVED_FOLDERS = ("table3", "sensitivity")
_COMMENT_COLUMN = 45


def _line(key: str, value: object, comment: str) -> str:
    return f"{key}: {value}".ljust(_COMMENT_COLUMN - 1) + f" # {comment}"


def _body(base: str, output_dir: str, changes: dict[str, str]) -> str:
    """The base recipe without its header, with ``output_dir`` and the ``changes`` (key -> whole new line)."""
    body = base[base.index("\n# Data:") + 1 :]
    for key, line in {"output_dir": _line("output_dir", output_dir, "this variant's own folder"), **changes}.items():
        body, count = re.subn(rf"^{key}: .*$", line, body, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"base recipe: expected one line '{key}: ...', found {count}.")
    return body


def _header(title: str, base_name: str, paper: str) -> str:
    return (
        f"# {title}: {paper}\n"
        f"# Derived from recipes/{base_name}.yaml by recipes/derive.py: edit that file (or derive.py) and run\n"
        f"# `python recipes/derive.py` rather than editing this one.\n\n"
    )


def _output_dir(base: str, suffix: str) -> str:
    return re.search(r"^output_dir: (\S+)", base, flags=re.MULTILINE).group(1) + "-" + suffix


def _shown(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def derived_recipes() -> dict[Path, str]:
    """Every derived recipe's path and text."""
    recipes = {}
    for dataset in DATASETS:
        base = (RECIPES / f"{dataset}.yaml").read_text()
        title = re.match(r"# MuSE on ([^:]+):", base).group(1)
        for variant, scores in TABLE3_F1.items():
            if variant == "full" or dataset not in scores:
                continue
            line = _line("variant", variant, f"paper 4.3 / Table 3: {VARIANT_TITLES[variant]}")
            # The variant's own values replace the base recipe's, which would contradict it (the scripts refuse that).
            changes = {
                key: _line(key, value, f"set by variant {variant} (configuration_muse.ABLATION_VARIANTS)")
                for key, value in ABLATION_VARIANTS[variant].items()
                if re.search(rf"^{key}: ", base, flags=re.MULTILINE)
            }
            text = _header(
                f"{VARIANT_TITLES[variant]} on {title}",
                dataset,
                f"paper Table 3 (test F1 {scores[dataset]:.2f}).",
            ) + _body(base, _output_dir(base, variant.replace("_", "-")), changes)
            recipes[RECIPES / "table3" / f"{dataset}-{variant}.yaml"] = f"{text.rstrip()}\n{line}\n"
        for sweep in SWEEPS:
            for value in sweep.values:
                if value == sweep.default:
                    continue
                shown = _shown(value)
                text = _header(
                    f"MuSE on {title} with {sweep.name} = {shown}",
                    dataset,
                    "paper Figure 4 (a plot: the paper gives no number for this point).",
                ) + _body(
                    base,
                    _output_dir(base, f"{sweep.name}{shown}"),
                    {sweep.argument: _line(sweep.argument, value, f"{sweep.name}, {sweep.source}")},
                )
                recipes[RECIPES / "sensitivity" / f"{dataset}-{sweep.name}{shown}.yaml"] = text
    return recipes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only compare the files with what they should be.")
    args = parser.parse_args(argv)
    expected = derived_recipes()
    present = {path for folder in DERIVED_FOLDERS for path in (RECIPES / folder).glob("*.yaml")}
    stale = sorted(path for path, text in expected.items() if not path.is_file() or path.read_text() != text)
    extra = sorted(present - set(expected))
    if args.check:
        for path in stale:
            print(f"missing or out of date: {path.relative_to(RECIPES.parent)}")
        for path in extra:
            print(f"not derived from any base recipe: {path.relative_to(RECIPES.parent)}")
        if stale or extra:
            print("Run `python recipes/derive.py` to rewrite the derived recipes.")
            return 1
        print(f"{len(expected)} derived recipes are up to date.")
        return 0
    for path in extra:
        path.unlink()
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text(expected[path])
    print(f"Wrote {len(stale)} of {len(expected)} derived recipes; removed {len(extra)} that no base recipe derives.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
