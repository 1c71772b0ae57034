"""`cpx schema`: print the JSON Schema of the spec language (for editors and validators)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the spec",
        description=(
            "Print a JSON Schema of the spec language. Save it and point your editor at it, e.g. with "
            "a first line `# yaml-language-server: $schema=spec.schema.json` in the spec."
        ),
    )
    p.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cpx.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0
