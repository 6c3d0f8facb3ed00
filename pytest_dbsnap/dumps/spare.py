"""Detached child of `dbsnap restore`: prepares the spare copy for the next restore, off the critical path."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import prepare_spare
from pytest_dbsnap.errors import DbsnapError
from pytest_dbsnap.postgres.external import connect_external


def main() -> None:
    # The parent already applied the remote-host guard to this DSN.
    server = connect_external(os.environ["DBSNAP_SPARE_DSN"], allow_remote=True)
    with contextlib.suppress(DbsnapError):
        prepare_spare(server, DumpMeta.read(Path(os.environ["DBSNAP_SPARE_META"])))


if __name__ == "__main__":
    main()
