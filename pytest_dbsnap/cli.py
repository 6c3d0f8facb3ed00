"""The dbsnap command line: the same library calls as the plugin, with messages instead of tracebacks.

Exit codes: 0 success, 1 the operation failed (corrupt dump, restore error), 2 usage or configuration error.
Heavy imports wait until a command needs them, so `dbsnap --help` and small commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_dbsnap import __version__
from pytest_dbsnap.errors import ConfigError, DbsnapError
from pytest_dbsnap.settings import Settings, find_pyproject, load_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}


def load_cli_settings(args: argparse.Namespace) -> Settings:
    """Settings as the plugin builds them: pyproject found from the current folder upwards, env, then flags."""
    pyproject = find_pyproject(Path.cwd())
    root = pyproject.parent if pyproject else Path.cwd()
    cli: dict[str, object | None] = {
        "env": getattr(args, "env", None),
        "dsn": getattr(args, "dsn", None),
        "database": getattr(args, "database", None),
        "dumps_dir": getattr(args, "dumps_dir", None),
        "pg_bindir": getattr(args, "pg_bindir", None),
        "allow_remote": True if getattr(args, "allow_remote", False) else None,
        "verify": False if getattr(args, "no_verify", False) else None,
        "provider": getattr(args, "provider", None),
    }
    return load_settings(project_root=root, pyproject=pyproject, cli=cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbsnap",
        description="Versioned PostgreSQL dumps: generate, restore, list, show, verify, prune, import.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = load_cli_settings(args)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DbsnapError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dbsnap: interrupted; nothing half-written was left in the dump store.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
