"""Blob storage behind one interface: a local folder (embedded default) or Azure (production).

Images travel between the gateway and the pipeline as blob URIs, never inside run config,
because run config lives in Dagster's event log. A URI names its container:
``local://<container>/<path>`` or ``azure://<container>/<path>``; a store only accepts URIs
of its own scheme and container, so a caller can never make it read somewhere else.

Where things live in the container is jewel_dagster/storage_layout.py's (it builds every key).

Exceptions (BlobStoreError and ForeignUriError are defined in storage_layout, which raises the
latter for a malformed key, and are re-exported here)::

    BlobStoreError
    ├── BlobNotFoundError   the URI is ours but nothing is stored there
    └── ForeignUriError     the URI is not in this store's container (or is malformed)
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from jewel_dagster.storage_layout import BlobStoreError, ForeignUriError, check_path, check_prefix


class BlobNotFoundError(BlobStoreError):
    pass


@dataclass(frozen=True)
class BlobInfo:
    """One listed blob: its path in the container and when it was last written."""

    path: str
    modified: datetime


class BlobStore(dg.ConfigurableResource, ABC):
    """Abstract blob store; assets and the gateway depend on this type only."""

    container: str = "jewelry-uploads"

    @property
    @abstractmethod
    def scheme(self) -> str: ...

    @abstractmethod
    def put_path(self, path: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def create_path(self, path: str, data: bytes, content_type: str) -> bool:
        """Store ``data`` only if nothing is at ``path`` yet, atomically for every process and
        machine sharing the store; False when something was. Gateway replicas claim work with it."""

    @abstractmethod
    def get_path(self, path: str) -> bytes:
        """Raise BlobNotFoundError when nothing is stored at ``path``."""

    @abstractmethod
    def exists_path(self, path: str) -> bool: ...

    @abstractmethod
    def delete_path(self, path: str) -> None:
        """Remove the blob if it exists (idempotent)."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[BlobInfo]:
        """Every blob under the folder ``prefix`` (ending in '/'), in no particular order."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob under the folder ``prefix``; how many were removed (idempotent)."""
        removed = 0
        for blob in list(self.list_prefix(check_prefix(prefix))):
            self.delete_path(blob.path)
            removed += 1
        return removed

    def uri_for(self, path: str) -> str:
        return f"{self.scheme}://{self.container}/{check_path(path)}"

    def path_of(self, uri: str) -> str:
        """The blob path inside our container, or ForeignUriError for any other URI."""
        prefix = f"{self.scheme}://{self.container}/"
        if not isinstance(uri, str) or not uri.startswith(prefix):
            raise ForeignUriError(f"URI is not in the storage container {prefix!r}: {uri!r}")
        return check_path(uri[len(prefix) :])

    def signed_url(self, path: str, lifetime: timedelta) -> str | None:
        """A time-limited URL a browser can fetch the blob from, when the store has such URLs."""
        return None

    @abstractmethod
    def link(self, path: str) -> str:
        """Where an operator finds the full artifact (no credentials in it): a file or blob URL."""

    def put(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.put_path(check_path(path), data, content_type)
        return self.uri_for(path)

    def get(self, uri: str) -> bytes:
        return self.get_path(self.path_of(uri))

    def exists(self, uri: str) -> bool:
        return self.exists_path(self.path_of(uri))

    def delete(self, uri: str) -> None:
        self.delete_path(self.path_of(uri))


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root/<container>/``: the embedded default, no service needed."""

    root: str

    @property
    def scheme(self) -> str:
        return "local"

    def _file(self, path: str) -> Path:
        return Path(self.root) / self.container / check_path(path)

    def _written_aside(self, target: Path, data: bytes) -> str:
        """The data in a temporary file beside ``target``, for the caller to rename or link into
        place: a reader polling for the blob never sees half of it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def put_path(self, path: str, data: bytes, content_type: str) -> None:
        target = self._file(path)
        tmp = self._written_aside(target, data)
        try:
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create_path(self, path: str, data: bytes, content_type: str) -> bool:
        target = self._file(path)
        # Hard-linked into place: link() fails when the name exists (atomic on one file system).
        tmp = self._written_aside(target, data)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_path(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob at {self.uri_for(path)}") from None

    def exists_path(self, path: str) -> bool:
        return self._file(path).is_file()

    def delete_path(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)

    def list_prefix(self, prefix: str) -> Iterator[BlobInfo]:
        base = Path(self.root) / self.container
        folder = base / check_prefix(prefix)
        if not folder.is_dir():
            return
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # a write in progress (put_path renames it when done)
                file = Path(dirpath) / name
                try:
                    modified = datetime.fromtimestamp(file.stat().st_mtime, UTC)
                except FileNotFoundError:
                    continue  # removed while we listed
                yield BlobInfo(file.relative_to(base).as_posix(), modified)

    def delete_prefix(self, prefix: str) -> int:
        """Files first, then the folders they leave empty, so nothing of the request remains."""
        removed = super().delete_prefix(prefix)
        folder = Path(self.root) / self.container / prefix
        if folder.is_dir():
            for dirpath, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
                try:
                    Path(dirpath).rmdir()
                except OSError:
                    pass  # not empty: a blob written meanwhile stays
        return removed

    def link(self, path: str) -> str:
        return self._file(path).resolve().as_uri()


class AzureBlobStore(BlobStore):
    """Azure Blob Storage (or Azurite): `azure://<container>/<blob>` URIs.

    The SDK's own retry policy (exponential, bounded) and timeouts apply to every call; the
    container is created on first use when it is missing.
    """

    connection_string: str | None = None
    account_name: str | None = None
    account_key: str | None = None
    account_url: str | None = Field(default=None, description="Defaults to https://<account>.blob.core.windows.net")
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 60.0
    retries: int = 3
    _container_client: Any = PrivateAttr(default=None)

    @property
    def scheme(self) -> str:
        return "azure"

    def container_client(self) -> Any:
        """The SDK container client (created with the container on first use); also used for Dagster's compute logs."""
        if self._container_client is None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.blob import BlobServiceClient

            options: dict[str, Any] = {
                "retry_total": self.retries,
                "connection_timeout": self.connect_timeout_seconds,
                "read_timeout": self.read_timeout_seconds,
            }
            if self.connection_string:
                service = BlobServiceClient.from_connection_string(self.connection_string, **options)
            elif self.account_name and self.account_key:
                url = self.account_url or f"https://{self.account_name}.blob.core.windows.net"
                credential = {"account_name": self.account_name, "account_key": self.account_key}
                service = BlobServiceClient(url, credential=credential, **options)
            else:
                raise BlobStoreError("Azure storage needs a connection string or an account name and key")
            container = service.get_container_client(self.container)
            try:
                container.create_container()
            except ResourceExistsError:
                pass
            self._container_client = container
        return self._container_client

    def put_path(self, path: str, data: bytes, content_type: str) -> None:
        from azure.storage.blob import ContentSettings

        self.container_client().upload_blob(
            path, data, overwrite=True, content_settings=ContentSettings(content_type=content_type)
        )

    def create_path(self, path: str, data: bytes, content_type: str) -> bool:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        try:  # overwrite=False sends If-None-Match: *, which the service decides atomically
            self.container_client().upload_blob(
                path, data, overwrite=False, content_settings=ContentSettings(content_type=content_type)
            )
        except ResourceExistsError:
            return False
        return True

    def get_path(self, path: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container_client().download_blob(path).readall()
        except ResourceNotFoundError:
            raise BlobNotFoundError(f"no blob at {self.uri_for(path)}") from None

    def exists_path(self, path: str) -> bool:
        return bool(self.container_client().get_blob_client(path).exists())

    def delete_path(self, path: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.container_client().delete_blob(path)
        except ResourceNotFoundError:
            pass

    def list_prefix(self, prefix: str) -> Iterator[BlobInfo]:
        # list_blobs pages by itself (5,000 names a call), each call under the SDK's timeouts.
        for blob in self.container_client().list_blobs(name_starts_with=check_prefix(prefix)):
            yield BlobInfo(str(blob.name), blob.last_modified)

    def delete_prefix(self, prefix: str) -> int:
        """Batched: one `delete_blobs` call per 256 names (the Blob Batch API's limit)."""
        names = [blob.path for blob in self.list_prefix(prefix)]
        for start in range(0, len(names), 256):
            self._delete_batch(names[start : start + 256])
        return len(names)

    def _delete_batch(self, names: list[str]) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            self.container_client().delete_blobs(*names, raise_on_any_failure=False)
        except HttpResponseError:
            # Azurite and some accounts refuse batch requests: one call per blob then.
            for name in names:
                self.delete_path(name)

    def link(self, path: str) -> str:
        return str(self.container_client().get_blob_client(check_path(path)).url)

    def signed_url(self, path: str, lifetime: timedelta) -> str | None:
        """A read-only SAS URL valid for ``lifetime``: results handed out without our keys."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = self.container_client().get_blob_client(check_path(path))
        credential = blob.credential
        account_key = getattr(credential, "account_key", None)
        if not account_key:
            return None
        token = generate_blob_sas(
            account_name=blob.account_name,
            container_name=self.container,
            blob_name=path,
            account_key=account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + lifetime,
        )
        return f"{blob.url}?{token}"
