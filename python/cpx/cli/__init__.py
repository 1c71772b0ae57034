"""The `cpx` command line: one module per command, each with `register(subparsers)` and `run(args)`.

Command modules import nothing heavy at module level, so `cpx --help` and `cpx compile`
stay fast and never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import cpx
from cpx.errors import CpxError

# The order `cpx --help` lists commands in; any other command module found here comes after.
ORDER = ("compile", "execute", "status", "plan", "analyze", "report", "query", "schema")


def commands() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found.difference(ORDER))


EXIT_USAGE = 2  # bad spec / bad arguments, as argparse does


class CLIError(CpxError):
    """An error the CLI reports as one message and an exit code, without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpx",
        description=(
            "cpx compiles a declarative YAML experiment spec into a plan of content-hashed "
            "stages, executes it with caching and crash-safe resume, and analyses the results "
            "with honest statistics."
        ),
        epilog="Typical use: cpx compile specs/demo.yaml && cpx execute (execute, status, report, query, analyze and plan show take the run folder of the last `cpx compile` here when none is given)",
    )
    parser.add_argument("--version", action="version", version=f"cpx {cpx.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands():
        module = importlib.import_module(f"cpx.cli.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"cpx {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"cpx {args.command}: interrupted", file=sys.stderr)
        return 130
