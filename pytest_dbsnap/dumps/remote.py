"""The shared dump store on S3-compatible object storage: one CI job pushes a dump, the others pull it.

Layout under s3://bucket/prefix, the same as the local store's:
  <env>/<name>.dump   the pg_dump -Fc archive, uploaded first (in parts when large)
  <env>/<name>.json   its metadata, uploaded only after the dump, so a reader never finds metadata without its dump
  <env>/latest        the name of the newest pushed dump, moved last
A pull downloads into a hidden temporary file of the local store, checks its size and sha256 against the remote
metadata and only then installs it (which moves the local `latest`): an interrupted or corrupt download leaves
nothing behind. boto3 is imported lazily (the `s3` extra); credentials and region come from boto3's default chain.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dbsnap.config.parsers import split_s3_url
from pytest_dbsnap.core import progress
from pytest_dbsnap.core.files import FILE_MODE, write_atomic
from pytest_dbsnap.core.redact import redact
from pytest_dbsnap.dumps.fingerprint import file_sha256
from pytest_dbsnap.dumps.meta import DumpMeta
from pytest_dbsnap.dumps.restore import check_readable, describe_dump, verify_file
from pytest_dbsnap.dumps.store import DUMP_SUFFIX, LATEST, META_SUFFIX, SAFE_NAME, DumpStore
from pytest_dbsnap.dumps.transfer import Meter, Percent, Transfer, interactive
from pytest_dbsnap.errors import (
    ConfigError,
    DbsnapError,
    DumpCorrupt,
    DumpError,
    DumpNotFound,
    RemoteAccessDenied,
    RemoteBucketMissing,
    RemoteCredentialsError,
    RemoteError,
    RemoteUnreachable,
    storage_error,
    writing,
)
from pytest_dbsnap.postgres.snapshot import SNAPSHOT_MARK

if TYPE_CHECKING:
    from pytest_dbsnap.postgres.base import PgTools
    from pytest_dbsnap.postgres.binaries import BinariesChoice
    from pytest_dbsnap.postgres.snapshot import SnapshotKey

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
OnTransfer = Callable[[int], None]  # bytes moved since the last call; called from the transfer's worker threads

# Codes that mean the credentials themselves were refused (a subset of the access-denied ones below).
_REJECTED_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"} | _REJECTED_CREDENTIALS


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(
            "A remote dump store is configured (setting remote), but boto3, which talks to S3, is not installed. "
            "Install the extra with `pip install pytest-dbsnap[s3]` (or `pip install 'boto3>=1.34'`), or unset "
            "remote / DBSNAP_REMOTE to work with the local dump store only."
        ) from exc
    return boto3


class RemoteStore:
    """Dumps on S3 (or an S3-compatible store at `endpoint_url`), laid out like the local DumpStore."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 8,
        attempts: int = 3,
        show_progress: bool | None = None,
    ) -> None:
        try:
            self.bucket, self.prefix = split_s3_url(url)
        except ValueError as exc:
            raise ConfigError(
                f"The remote dump store {url!r} is not accepted: {exc}. Set remote (or "
                f"DBSNAP_REMOTE) to s3://BUCKET or s3://BUCKET/PREFIX."
            ) from None
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.attempts = attempts
        self.show_progress = interactive() if show_progress is None else show_progress
        self._client: Any = None
        self._credential_source = "boto3's default chain"

    @classmethod
    def configured(cls, remote: str | None, endpoint_url: str | None) -> RemoteStore:
        """The store named by the `remote` setting, or one paragraph saying how to name one."""
        if not remote:
            raise ConfigError(
                'No remote dump store is configured. Set remote = "s3://BUCKET/PREFIX" in [tool.dbsnap] of '
                "pyproject.toml or DBSNAP_REMOTE (and remote_endpoint_url / DBSNAP_REMOTE_ENDPOINT_URL for an "
                "S3-compatible store other than AWS)."
            )
        return cls(remote, endpoint_url)

    # --- names --------------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The store as messages name it: never with credentials (an endpoint URL could carry some)."""
        return self.url + (f" at {redact(self.endpoint_url)}" if self.endpoint_url else "")

    def key(self, env: str, filename: str) -> str:
        return "/".join(part for part in (self.prefix, env, filename) if part)

    def object_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _env_prefix(self, env: str | None) -> str:
        base = f"{self.prefix}/" if self.prefix else ""
        return f"{base}{env}/" if env else base

    @staticmethod
    def _check_name(what: str, name: str) -> str:
        # Names travel from the remote into local paths: nothing that could climb out of the store folder.
        if not SAFE_NAME.match(name):
            raise ConfigError(
                f"The {what} {name!r} is not accepted: use letters, digits, '_', '-' and '.', "
                f"starting with a letter or digit."
            )
        return name

    # --- the S3 client and its errors ----------------------------------------------------------------------

    def _s3(self) -> Any:
        if self._client is None:
            boto3 = _boto3()
            from botocore.config import Config

            with self._translated("looking up AWS credentials"):
                session = boto3.session.Session()
                credentials = session.get_credentials()
                if credentials is None:
                    raise self._no_credentials("none of the sources had any")
                self._credential_source = f"credential source {credentials.method!r}"
                # Most S3-compatible stores (MinIO, Ceph) only understand path-style addressing.
                config = Config(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": self.attempts},
                    s3={"addressing_style": "path"} if self.endpoint_url else None,
                )
                self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _no_credentials(self, detail: str) -> RemoteCredentialsError:
        return RemoteCredentialsError(
            f"No usable AWS credentials were found for the remote dump store {self.where} ({detail}). boto3 "
            f"looks for AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary "
            f"credentials), then the profile named by AWS_PROFILE in ~/.aws/credentials and ~/.aws/config "
            f"(AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE move them), then a container or instance role. Set "
            f"one of them for this job, with AWS_DEFAULT_REGION (or region in the profile), and run again."
        )

    def _explain(self, action: str, exc: BaseException) -> DbsnapError | None:
        """The project error for a botocore/boto3/s3transfer failure (found along the exception chain)."""
        from botocore import exceptions as bx

        seen: BaseException | None = exc
        for _ in range(8):
            if seen is None or isinstance(seen, bx.ClientError | bx.BotoCoreError):
                break
            seen = getattr(seen, "last_exception", None) or seen.__cause__ or seen.__context__
        if isinstance(seen, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
            return self._no_credentials(redact(str(seen)))
        if isinstance(seen, bx.ClientError):
            error = seen.response.get("Error", {})
            code = str(error.get("Code") or seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            message = redact(str(error.get("Message") or code)).strip()
            if code == "NoSuchBucket":
                return RemoteBucketMissing(
                    f"The bucket {self.bucket!r} of the remote dump store {self.where} does not exist (while "
                    f"{action}). Create it (for example `aws s3 mb s3://{self.bucket}`), or fix the setting remote "
                    f"(DBSNAP_REMOTE){' and remote_endpoint_url' if self.endpoint_url else ''}."
                )
            if code in _REJECTED_CREDENTIALS:
                return RemoteAccessDenied(
                    f"The remote dump store {self.where} rejected the AWS credentials from {self._credential_source} "
                    f"while {action} ({code}: {message}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                    f"profile) and that temporary credentials have not expired."
                )
            if code in _DENIED:
                return RemoteAccessDenied(
                    f"The remote dump store {self.where} refused {action} ({code}: {message}) to the credentials "
                    f"from {self._credential_source}. Grant them s3:ListBucket, s3:GetObject and s3:PutObject on "
                    f"bucket {self.bucket!r}, or use credentials that have them."
                )
            return RemoteError(
                f"The remote dump store {self.where} answered {code} ({message}) while {action}. "
                f"Nothing was changed in the local dump store; check the store and run again."
            )
        if isinstance(seen, bx.ConnectionError | bx.HTTPClientError):
            return RemoteUnreachable(
                f"The remote dump store {self.where} could not be reached while {action} ({type(seen).__name__}: "
                f"{redact(str(seen))}). Check the network, proxy variables and remote_endpoint_url "
                f"(DBSNAP_REMOTE_ENDPOINT_URL); nothing half-transferred was kept in the local dump store."
            )
        if isinstance(seen, bx.BotoCoreError):
            return RemoteError(f"Using the remote dump store {self.where} failed while {action}: {redact(str(seen))}.")
        return None

    @contextlib.contextmanager
    def _translated(self, action: str, *, needed_bytes: int | None = None) -> Iterator[None]:
        try:
            yield
        except DbsnapError:
            raise
        except OSError as exc:
            # The local disk refusing the download is not the store's fault: say which folder and how much.
            converted = storage_error(exc, needed_bytes=needed_bytes)
            if converted is not None:
                raise converted from exc
            problem = self._explain(action, exc)
            if problem is None:
                raise
            raise problem from exc
        except Exception as exc:
            problem = self._explain(action, exc)
            if problem is None:
                raise
            raise problem from exc

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        # S3 needs upload parts of 5 MiB or more; s3transfer raises smaller ones to that. Downloads use ranged
        # GETs of part_size whatever it is.
        return TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=self.max_concurrency,
            preferred_transfer_client="classic",
        )

    def _callback(self, label: str, total: int, on_transfer: OnTransfer | None) -> OnTransfer | None:
        sinks: list[OnTransfer] = []
        if progress.active():  # the step's live line shows the transfer as its bar (and CI its duration)
            sinks.append(Meter(total))
        elif self.show_progress:
            sinks.append(Percent(label, total))
        if on_transfer is not None:
            sinks.append(on_transfer)
        if not sinks:
            return None

        def callback(amount: int) -> None:
            for sink in sinks:
                sink(amount)

        return callback

    def _read_text(self, key: str, action: str) -> str | None:
        """An object's text, or None when there is no such key."""
        from botocore.exceptions import ClientError

        client = self._s3()
        with self._translated(action):
            try:
                response = client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return str(response["Body"].read().decode("utf-8", errors="replace"))

    def _put_text(self, key: str, text: str, content_type: str) -> None:
        client = self._s3()
        with self._translated(f"writing {self.object_url(key)}"):
            client.put_object(Bucket=self.bucket, Key=key, Body=text.encode(), ContentType=content_type)

    # --- reading ------------------------------------------------------------------------------------------

    def read_meta(self, env: str, name: str) -> DumpMeta | None:
        key = self.key(env, f"{name}{META_SUFFIX}")
        text = self._read_text(key, f"reading {self.object_url(key)}")
        if text is None:
            return None
        where = self.object_url(key)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DumpCorrupt(
                f"The remote dump metadata {where} is not readable JSON ({exc}). Push the dump "
                f"again from a good copy (dbsnap push --env {env} {name})."
            ) from exc
        meta = DumpMeta.from_dict(data, where=where)
        if meta.name != name or meta.environment != env:
            raise DumpCorrupt(
                f"The remote metadata {where} describes dump {meta.name!r} of environment "
                f"{meta.environment!r}, not {name!r} of {env!r}: objects were renamed by hand. Push "
                f"the dump again (dbsnap push --env {env} {name})."
            )
        return meta

    def latest_pointer(self, env: str) -> str | None:
        """The name the remote `latest` object holds, or None when there is none."""
        key = self.key(env, LATEST)
        text = self._read_text(key, f"reading {self.object_url(key)}")
        name = (text or "").strip()
        return self._check_name("remote latest dump name", name) if name else None

    def names(self, env: str | None = None) -> builtins.list[tuple[str, str]]:
        """(env, name) of every remote dump that has its metadata, oldest first within an environment."""
        client = self._s3()
        base = self._env_prefix(env)
        found: list[tuple[str, str]] = []
        with self._translated(f"listing {self.object_url(base)}"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    relative = str(item["Key"])[len(self._env_prefix(None)) :]
                    folder, _, filename = relative.partition("/")
                    if "/" in filename or not filename.endswith(META_SUFFIX) or not SAFE_NAME.match(filename):
                        continue
                    if SNAPSHOT_MARK in filename:
                        continue  # a cluster snapshot's metadata, not a dump's
                    found.append((folder, filename[: -len(META_SUFFIX)]))
        return sorted(found)

    def list_remote(self, env: str | None = None) -> builtins.list[DumpMeta]:
        """Metadata of the remote dumps of one environment (or all), oldest first per environment."""
        if env is not None:
            self._check_name("environment name", env)
        metas: list[DumpMeta] = []
        for folder, name in self.names(env):
            meta = self.read_meta(folder, name)
            if meta is not None:  # removed between listing and reading
                metas.append(meta)
        return metas

    # --- push ---------------------------------------------------------------------------------------------

    def push(
        self, store: DumpStore, env: str, name: str = LATEST, *, on_transfer: OnTransfer | None = None
    ) -> Transfer:
        """Upload a local dump (checked against its sha256 first), then its metadata, then move remote latest."""
        meta = store.get(env, name)
        path = store.dump_path(env, meta.name)
        verify_file(meta, path)  # a corrupt local copy must not spread to every runner
        began = time.monotonic()
        existing = self.read_meta(env, meta.name)
        if existing is not None and existing.sha256 != meta.sha256:
            raise DumpError(
                f"The remote dump store {self.where} already has a dump {env}/{meta.name} with different content "
                f"(sha256 {existing.sha256[:16]}... instead of {meta.sha256[:16]}...); not overwriting it. Generate "
                f"a new dump (dbsnap generate --env {env}) and push that one."
            )
        dump_key = self.key(env, f"{meta.name}{DUMP_SUFFIX}")
        if existing is None:
            client = self._s3()
            with self._translated(f"uploading {self.object_url(dump_key)}"):
                client.upload_file(
                    str(path),
                    self.bucket,
                    dump_key,
                    Config=self._transfer_config(),
                    ExtraArgs={"ContentType": "application/octet-stream", "Metadata": {"sha256": meta.sha256}},
                    Callback=self._callback(f"pushing {env}/{meta.name}", meta.size_bytes, on_transfer),
                )
            self._put_text(self.key(env, f"{meta.name}{META_SUFFIX}"), meta.to_json(), "application/json")
        self._put_text(self.key(env, LATEST), meta.name + "\n", "text/plain")
        snapshots = self._push_snapshots(path, env, on_transfer)
        return Transfer(meta, existing is None, time.monotonic() - began, snapshots)

    def _push_snapshots(self, dump_path: Path, env: str, on_transfer: OnTransfer | None) -> tuple[str, ...]:
        """The dump's cluster snapshots that verify and are not there yet, archive first, then metadata (a
        reader that finds the metadata finds the whole archive). A damaged local one stays here."""
        from pytest_dbsnap.postgres.snapshot import snapshots_of, verify_snapshot

        pushed: list[str] = []
        for snapshot in snapshots_of(dump_path):
            try:
                snapshot_meta = verify_snapshot(snapshot)
            except DbsnapError:
                continue
            meta_key = self.key(env, snapshot.meta_path.name)
            if self._read_text(meta_key, f"reading {self.object_url(meta_key)}") is not None:
                continue
            archive_key = self.key(env, snapshot.archive.name)
            with self._translated(f"uploading {self.object_url(archive_key)}"):
                self._s3().upload_file(
                    str(snapshot.archive),
                    self.bucket,
                    archive_key,
                    Config=self._transfer_config(),
                    ExtraArgs={"ContentType": "application/zstd", "Metadata": {"sha256": snapshot_meta.sha256}},
                    Callback=self._callback(f"pushing {snapshot.name}", snapshot_meta.size_bytes, on_transfer),
                )
            self._put_text(meta_key, snapshot.meta_path.read_text(), "application/json")
            pushed.append(snapshot.name)
        return tuple(pushed)

    def push_snapshots(self, store: DumpStore, env: str, name: str) -> tuple[str, ...]:
        """The cluster snapshots of a dump that is in the remote store already (a session's teardown writes its
        snapshot after --push-dump sent the dump): uploaded when missing there, archive before metadata."""
        meta = store.get(env, name)
        existing = self.read_meta(env, meta.name)
        if existing is None or existing.sha256 != meta.sha256:
            return ()  # only beside the very dump it was made from
        return self._push_snapshots(store.dump_path(env, meta.name), env, None)

    def pull_own_snapshot(self, store: DumpStore, meta: DumpMeta, binaries: BinariesChoice) -> str | None:
        """This machine's cluster snapshot of a local dump (the key of the server binaries `binaries` chooses,
        the Settings), when the remote store has it: what `dbsnap pull` and a session's own pull both bring.
        None when there is none for this machine, or no server binaries here (no local cluster to start)."""
        from pytest_dbsnap.postgres.base import find_pg_tools
        from pytest_dbsnap.postgres.snapshot import machine_key

        try:
            key = machine_key(find_pg_tools(binaries), meta.sha256)
        except DbsnapError:
            return None
        return self.pull_snapshot(store, meta, key)

    def pull_snapshot(
        self, store: DumpStore, meta: DumpMeta, key: SnapshotKey, *, on_transfer: OnTransfer | None = None
    ) -> str | None:
        """Bring this machine's cluster snapshot of a local dump (the one with `key`), when the remote store has
        it and the local store does not; verified before it is installed. Returns its archive name, or None."""
        from pytest_dbsnap.postgres.snapshot import SnapshotMeta, snapshot_for

        env = meta.environment
        snapshot = snapshot_for(store.dump_path(env, meta.name), key)
        if snapshot.archive.is_file() and snapshot.meta_path.is_file():
            return None
        meta_key, archive_key = self.key(env, snapshot.meta_path.name), self.key(env, snapshot.archive.name)
        text = self._read_text(meta_key, f"reading {self.object_url(meta_key)}")
        if text is None:
            return None
        try:
            snapshot_meta = SnapshotMeta.parse(text, self.object_url(meta_key))
        except DbsnapError:
            return None  # not usable here; the dump is restored as usual
        if snapshot_meta.key != key or snapshot_meta.archive != snapshot.archive.name:
            return None
        temporary = snapshot.archive.with_name(f".{snapshot.archive.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        try:
            self._download(archive_key, temporary, snapshot_meta.size_bytes, f"pulling {snapshot.name}", on_transfer)
            size = temporary.stat().st_size
            if size != snapshot_meta.size_bytes or file_sha256(temporary) != snapshot_meta.sha256:
                raise DumpCorrupt(
                    f"The remote cluster snapshot {self.object_url(archive_key)} does not match its remote metadata "
                    f"(size or sha256): it is corrupt or was replaced. Nothing was installed; the dump is restored "
                    f"as usual. Push a good copy again (dbsnap push --env {env} {meta.name})."
                )
            os.replace(temporary, snapshot.archive)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        write_atomic(snapshot.meta_path, text)
        return snapshot.name

    # --- pull ---------------------------------------------------------------------------------------------

    def pull(
        self,
        store: DumpStore,
        env: str,
        name: str = LATEST,
        *,
        on_transfer: OnTransfer | None = None,
        tools: PgTools | None = None,
    ) -> Transfer:
        """Download a remote dump into the local store (verified, then installed as the local latest).

        With `tools`, a dump their pg_restore cannot read (a newer pg_dump's) is refused before any byte moves.
        """
        store.env_dir(env)  # validates the environment name
        resolved = self.latest_pointer(env) if name == LATEST else self._check_name("dump name", name)
        if resolved is None:
            names = self.names(env)
            resolved = names[-1][1] if names else None
        meta = self.read_meta(env, resolved) if resolved else None
        if meta is None:
            available = [n for _, n in self.names(env)]
            asked = "no latest dump" if name == LATEST else f"no dump named {name!r}"
            listing = f"it has {', '.join(available[-5:])}" if available else "it has none for this environment"
            raise DumpNotFound(
                f"The remote dump store {self.where} has {asked} of environment {env!r}: {listing}. "
                f"Push one from the job that generates dumps (dbsnap push --env {env}, or pytest "
                f"--push-dump)."
            )
        return self.fetch(store, meta, on_transfer=on_transfer, tools=tools)

    def pull_matching(
        self,
        store: DumpStore,
        env: str,
        fingerprint: str,
        *,
        on_transfer: OnTransfer | None = None,
        tools: PgTools | None = None,
    ) -> Transfer | None:
        """Pull the newest remote dump of `env` made from these inputs, or return None when there is none.

        As locally, the remote latest counts when it is an imported dump (no fingerprint: never stale).
        """
        metas = self.list_remote(env)
        if not metas:
            return None
        latest_name = self.latest_pointer(env)
        latest = next((m for m in metas if m.name == latest_name), None)
        if latest is not None and latest.fingerprint in (fingerprint, None):
            chosen: DumpMeta | None = latest
        else:
            chosen = next((m for m in reversed(metas) if m.fingerprint == fingerprint), None)
        return self.fetch(store, chosen, on_transfer=on_transfer, tools=tools) if chosen is not None else None

    def fetch(
        self, store: DumpStore, meta: DumpMeta, *, on_transfer: OnTransfer | None = None, tools: PgTools | None = None
    ) -> Transfer:
        """Download the dump `meta` describes into a temporary file, verify it, then install it; refused first
        (DumpTooNew, the local store untouched) when `tools`' pg_restore could not read it."""
        env = meta.environment
        if tools is not None:
            where = self.object_url(self.key(env, f"{meta.name}{DUMP_SUFFIX}"))
            check_readable(meta.pg_dump_version, tools, dump=describe_dump(meta, where))
        began = time.monotonic()
        with store.lock(env):
            # Another process (an xdist worker, an earlier pull) may have brought it already.
            if store.meta_path(env, meta.name).exists():
                local = store.get(env, meta.name)
                if local.sha256 != meta.sha256:
                    raise DumpError(
                        f"The local dump {env}/{meta.name} in {store.root} differs from the remote one in "
                        f"{self.where} (sha256 {local.sha256[:16]}... vs {meta.sha256[:16]}...). Remove the local "
                        f"one (dbsnap prune, or delete its two files) or pull another dump."
                    )
                store.set_latest(env, meta.name)
                return Transfer(local, False, time.monotonic() - began)
            dump_key = self.key(env, f"{meta.name}{DUMP_SUFFIX}")
            with store.incoming(env) as temporary:
                self._download(dump_key, temporary, meta.size_bytes, f"pulling {env}/{meta.name}", on_transfer)
                self._check_download(meta, temporary, dump_key)
                store.install(temporary, meta)
        return Transfer(meta, True, time.monotonic() - began)

    def _download(self, key: str, path: Path, size_bytes: int, label: str, on_transfer: OnTransfer | None) -> None:
        """One object into `path` (a dump or a cluster snapshot on its way in), synced to disk; a disk that refuses
        it is named with the size it needed."""
        with (
            self._translated(f"downloading {self.object_url(key)}", needed_bytes=size_bytes),
            writing(path),
            path.open("wb") as out,
        ):
            # A seekable file: s3transfer writes each ranged part at its offset, in place.
            self._s3().download_fileobj(
                self.bucket,
                key,
                out,
                Config=self._transfer_config(),
                Callback=self._callback(label, size_bytes, on_transfer),
            )
            out.flush()
            os.fsync(out.fileno())

    def _check_download(self, meta: DumpMeta, path: Path, key: str) -> None:
        size = path.stat().st_size
        if size != meta.size_bytes:
            problem = f"{size} bytes arrived, its metadata records {meta.size_bytes}"
        elif (sha256 := file_sha256(path)) != meta.sha256:
            problem = f"its sha256 is {sha256[:16]}..., its metadata records {meta.sha256[:16]}..."
        else:
            return
        raise DumpCorrupt(
            f"The remote dump {self.object_url(key)} does not match its remote metadata ({problem}): the object "
            f"is corrupt or was replaced. Nothing was installed in the local dump store. Push a good copy again "
            f"(dbsnap push --env {meta.environment} {meta.name}) or generate a new dump."
        )
