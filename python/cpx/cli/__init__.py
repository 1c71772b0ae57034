"""The `cpx` command line: one module per command, each with `register(subparsers)` and `run(args)`.

Command modules import nothing heavy at module level, so `cpx --help` and `cpx compile`
stay fast and never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
from typing import Any

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


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `yes | head -1`'s yes


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM stops a command as Ctrl-C does: the same cleanup, message and exit code."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except CLIError as e:
        print(f"cpx {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"cpx {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cpx status | head -1`): stop quietly, as Unix tools do. Python
        # would flush stdout again at exit and print the error: point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
