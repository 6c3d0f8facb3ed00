"""pytest-dbsnap: a seeded PostgreSQL database and a running stack in seconds.

The public surface is small on purpose: settings, servers, the dump store and its errors.
"""

from pytest_dbsnap.errors import DbsnapError

__version__ = "0.1.0"
__all__ = ["DbsnapError", "__version__"]
