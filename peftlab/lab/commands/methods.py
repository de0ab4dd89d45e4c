"""The registered methods: their ``--method`` names, what each trains and its options with their defaults.

peftlab methods [--options]
"""

from __future__ import annotations

import argparse
import dataclasses

from peftlab.methods import METHODS


def describe(cls) -> str:
    """What the method trains, in words, from its class's attributes."""
    if cls.trains_backbone:
        return "trains every backbone weight"
    return "trains modules in the chosen layers" if cls.trains_layers else "trains the head alone"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peftlab methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--options", action="store_true", help="list every option with its default and help")
    args = parser.parse_args(argv)
    for name, cls in METHODS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[:1]
        print(f"{name:10s} {summary[0] if summary else describe(cls) + '.'}")
        if args.options and cls.options_class is not None:
            for field in dataclasses.fields(cls.options_class):
                print(f"    --{field.name} (default {field.default!r}): {field.metadata.get('help', '')}")
    print("\nA method's layers go after '@' (adapter@2, lora@0-5); several join with '+' (adapter@1+lora@all).")
    return 0
