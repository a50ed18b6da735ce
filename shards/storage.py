"""One home for storage: local paths and object-store URIs (`s3://bucket/prefix`, `gs://...`,
any fsspec URI) behind one small API.

`as_path(x)` turns what the user gave into something path-like: a plain `pathlib.Path` for a local
path (so local runs behave exactly as before), or an `ObjectPath` for a URI. `ObjectPath` offers
the part of pathlib that longcap uses (`/`, name, stem, suffix, parent, with_suffix, with_name,
exists, is_file, is_dir, glob, rglob, iterdir, stat, read_bytes, read_text, write_bytes,
write_text, unlink), backed by a `pyarrow.fs.FileSystem`. The functions below take either kind:

- `open_input(p)`: a buffered, sequential binary stream; `open_tar(p)`: a tar opened on it for
  streaming; `random_access(p)`: a seekable file (Parquet reads only the footer and the columns
  asked for);
- `write_bytes(p, data)`: atomic locally (temp, fsync, rename, fsync the folder), one PUT on S3;
- `upload(local, dest)`, `download(src, local)`, `exists(p)`, `list_files(p, pattern,
  recursive)`, `delete(p)`, `join(base, *names)`, `staging_dir()`, `mirror_dir(uri, kind)`;
- `write_marked(files, mark, mark_bytes)`: data files first, then the completion mark. S3 has no
  rename: each object appears whole when its PUT completes, but a unit of several objects
  appears one object at a time. Readers and resumed runs trust only units whose mark exists,
  and the mark is written after every data object, so no one ever takes a partial unit for a
  finished one. A killed run leaves data objects without a mark; the rerun overwrites them
  (the names are deterministic) or deletes them.

S3 settings come from the usual AWS environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL); `configure(StorageConfig(...))` sets endpoint, region, anonymous access and
timeouts over them for the process (the `storage:` mapping of a config, `storage_config_from`).
Keys are not config fields: secrets stay in the environment, never in a run.yaml that is copied
into run folders and manifests. Marks rely on read-after-write consistency, which S3, GCS, R2
and MinIO provide.
Without explicit keys the AWS SDK's default chain runs (profile files, then on EC2 the instance
metadata service); AWS_EC2_METADATA_DISABLED=true turns the latter off, as the tests do.
Other schemes go to pyarrow's own filesystems (gs, hdfs) or, failing that, to fsspec.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")
# Big enough that a streamed tar costs one ranged GET per 8 MiB, not one per 512-byte header.
STREAM_BUFFER = 8 << 20


@dataclass(frozen=True)
class StorageConfig:
    """The `storage:` block of a config file; unset fields come from the environment."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 (MinIO), R2's or GCS's endpoint
    region: str | None = None
    anonymous: bool = False  # public buckets: no credentials, unsigned requests
    connect_timeout: float | None = None
    request_timeout: float | None = None


def storage_config_from(data: Any, where: str = "storage") -> StorageConfig:
    """A StorageConfig from a config file's `storage:` mapping; errors name the field."""
    if data is None:
        return StorageConfig()
    if not isinstance(data, dict):
        names = [f.name for f in fields(StorageConfig)]
        raise ValueError(f"{where}: expected a mapping of {names}")
    known = {f.name for f in fields(StorageConfig)}
    unknown = set(data) - known
    if unknown:
        hint = ""
        if unknown & {"access_key_id", "secret_access_key", "session_token"}:
            hint = "; credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only"
        raise ValueError(
            f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}{hint}"
        )
    for name in ("connect_timeout", "request_timeout"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"{where}.{name}: expected positive seconds, got {value!r}")
    if not isinstance(data.get("anonymous", False), bool):
        raise ValueError(f"{where}.anonymous: expected true or false")
    return StorageConfig(**data)


_config = StorageConfig()
_cache: dict[tuple, pafs.FileSystem] = {}
_lock = threading.Lock()


def configure(cfg: StorageConfig | None) -> None:
    """Use `cfg` (a run's `storage:` block) for every URI resolved from now on in this process."""
    global _config
    with _lock:
        _config = cfg or StorageConfig()
        _cache.clear()


def is_uri(x: Any) -> bool:
    """True for `scheme://...` other than file://; local paths and Path objects are not URIs."""
    if isinstance(x, ObjectPath):
        return True
    if not isinstance(x, str):
        return False
    m = _URI.match(x)
    return m is not None and m[1].lower() != "file"


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def s3_filesystem(cfg: StorageConfig | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3FileSystem from `cfg` (or the configured block) over the AWS environment."""
    cfg = cfg or _config
    endpoint = cfg.endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    region = cfg.region or _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {"region": region}
    if endpoint:
        m = _URI.match(endpoint)
        if m:  # pyarrow takes host[:port] and the scheme apart
            kwargs["scheme"] = m[1].lower()
            kwargs["endpoint_override"] = m[2].rstrip("/")
        else:
            kwargs["endpoint_override"] = endpoint.rstrip("/")
    if cfg.anonymous:
        kwargs["anonymous"] = True
    elif os.environ.get("AWS_ACCESS_KEY_ID"):
        # Explicit keys: the SDK then never walks its default chain (profiles, IMDS).
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    if cfg.connect_timeout:
        kwargs["connect_timeout"] = float(cfg.connect_timeout)
    if cfg.request_timeout:
        kwargs["request_timeout"] = float(cfg.request_timeout)
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    with _lock:
        if key not in _cache:
            _cache[key] = pafs.S3FileSystem(**kwargs)
        return _cache[key]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a URI or a local path."""
    m = _URI.match(str(uri))
    if m is None or m[1].lower() == "file":
        local = m[2] if m else str(uri)
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    scheme, rest = m[1].lower(), m[2].rstrip("/")
    if scheme in ("s3", "s3a"):
        if not rest:
            raise ValueError(f"{uri}: no bucket; write s3://BUCKET/PREFIX")
        return s3_filesystem(), rest
    try:
        fs, path = pafs.FileSystem.from_uri(str(uri))
        return fs, path.rstrip("/")
    except (ValueError, OSError):  # ArrowInvalid (a ValueError) for a scheme pyarrow lacks
        pass
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise ValueError(f"{uri}: no {scheme}:// filesystem in pyarrow, and no fsspec") from exc
    fs, path = url_to_fs(str(uri))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime_ns: int


class ObjectPath:
    """A path in an object store or other pyarrow filesystem, with pathlib's common methods.

    Pickles as its URI (re-resolved in the receiving process from its environment), so that
    DataLoader workers and Ray tasks can take one."""

    def __init__(self, uri: str, fs: pafs.FileSystem | None = None, path: str | None = None):
        m = _URI.match(uri)
        if m is None:
            raise ValueError(f"{uri}: not a URI (scheme://...)")
        self.scheme = m[1].lower()
        self.uri = f"{self.scheme}://{m[2].rstrip('/')}"
        if fs is None or path is None:
            fs, path = resolve(self.uri)
        self.fs, self.path = fs, path
        # What a listing said of this object (type, size, mtime): a path from glob, rglob or
        # iterdir answers is_file() and stat() without one request per object. Only listing
        # results carry it; any other path asks the store each time.
        self._listed: pafs.FileInfo | None = None

    def _child(self, path: str, info: pafs.FileInfo | None = None) -> ObjectPath:
        child = ObjectPath(f"{self.scheme}://{path}", self.fs, path)
        child._listed = info
        return child

    def __reduce__(self):
        return (ObjectPath, (self.uri,))

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ObjectPath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.uri == self.uri

    def __lt__(self, other: ObjectPath) -> bool:
        return self.uri < other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str | os.PathLike) -> ObjectPath:
        return self._child(posixpath.join(self.path, str(name)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> ObjectPath:
        return self._child(posixpath.dirname(self.path))

    def with_name(self, name: str) -> ObjectPath:
        return self._child(posixpath.join(posixpath.dirname(self.path), name))

    def with_suffix(self, suffix: str) -> ObjectPath:
        return self.with_name(self.stem + suffix)

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def _info(self) -> pafs.FileInfo:
        if self._listed is not None:
            return self._listed
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> _Stat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri}: no such object")
        return _Stat(int(info.size or 0), int(info.mtime_ns or 0))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object stores have no folders (a prefix exists once a key is under it)."""

    def _files(self, recursive: bool) -> list[ObjectPath]:
        sel = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        infos = self.fs.get_file_info(sel)
        return sorted(self._child(i.path, i) for i in infos if i.type == pafs.FileType.File)

    def iterdir(self) -> Iterator[ObjectPath]:
        sel = pafs.FileSelector(self.path, recursive=False, allow_not_found=True)
        return iter(sorted(self._child(i.path, i) for i in self.fs.get_file_info(sel)))

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        return (p for p in self._files(False) if fnmatch.fnmatchcase(p.name, pattern))

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        return (p for p in self._files(True) if fnmatch.fnmatchcase(p.name, pattern))

    def open(self, mode: str = "rb"):
        if mode == "rb":
            return self.fs.open_input_stream(self.path, compression=None, buffer_size=STREAM_BUFFER)
        if mode == "wb":
            self._listed = None
            return self.fs.open_output_stream(self.path, compression=None)
        raise ValueError(f"{self.uri}: open mode {mode!r}; objects open as 'rb' or 'wb'")

    def read_bytes(self) -> bytes:
        try:
            with self.open("rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists():
                raise FileNotFoundError(f"{self.uri}: no such object") from exc
            raise

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        with self.open("wb") as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        self._listed = None
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError:
            if not missing_ok or self.exists():
                raise


AnyPath = Path | ObjectPath


def as_path(x: str | os.PathLike | ObjectPath) -> AnyPath:
    """A `Path` for a local path (file:// included), an `ObjectPath` for any other URI."""
    if isinstance(x, ObjectPath | Path):
        return x
    text = os.fspath(x)
    m = _URI.match(text)
    if m is None:
        return Path(text)
    if m[1].lower() == "file":
        return Path(m[2])
    return ObjectPath(text)


def join(base: str | os.PathLike | ObjectPath, *names: str) -> str:
    """`base/name/...` as text, for a local path or a URI alike."""
    p = as_path(base)
    for n in names:
        p = p / n
    return str(p)


def open_input(p: str | os.PathLike | ObjectPath):
    """A sequential binary stream (buffered on object stores); use as a context manager."""
    p = as_path(p)
    return p.open("rb")


@contextmanager
def open_tar(p: str | os.PathLike | ObjectPath) -> Iterator[tarfile.TarFile]:
    """A tar opened for streaming ("r|*"): a local file as before, an object through a buffered
    stream (one ranged GET per STREAM_BUFFER bytes, never a download to disk)."""
    p = as_path(p)
    if isinstance(p, Path):
        with tarfile.open(p, mode="r|*") as tf:
            yield tf
        return
    with p.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        yield tf


def random_access(p: str | os.PathLike | ObjectPath):
    """What pyarrow.parquet reads from: the local Path itself, or a seekable remote file (only
    the footer and the requested column chunks are fetched)."""
    p = as_path(p)
    if isinstance(p, Path):
        return p
    return p.fs.open_input_file(p.path)


def exists(p: str | os.PathLike | ObjectPath) -> bool:
    return as_path(p).exists()


def list_files(
    p: str | os.PathLike | ObjectPath, pattern: str = "*", recursive: bool = False
) -> list[AnyPath]:
    """The files directly in (or, `recursive`, under) a folder or prefix matching `pattern`."""
    root = as_path(p)
    if isinstance(root, Path):
        found = root.rglob(pattern) if recursive else root.glob(pattern)
        return sorted(f for f in found if f.is_file())
    return list(root.rglob(pattern) if recursive else root.glob(pattern))


def delete(p: str | os.PathLike | ObjectPath, missing_ok: bool = True) -> None:
    as_path(p).unlink(missing_ok=missing_ok)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make the renames in a folder durable (a rename is only in the folder's own data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(p: str | os.PathLike | ObjectPath, data: bytes) -> None:
    """Write a whole file: locally temp, fsync, rename, fsync the folder (survives a power cut);
    on an object store one PUT (the object appears whole or not at all)."""
    p = as_path(p)
    if isinstance(p, ObjectPath):
        p.write_bytes(data)
        return
    from shards.runlock import temp_path

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    fsync_dir(p.parent)


def upload(local: str | os.PathLike, dest: str | os.PathLike | ObjectPath) -> None:
    """Copy a local file to `dest` (an object: streamed, multipart for large files)."""
    d = as_path(dest)
    with open(local, "rb") as src:
        if isinstance(d, ObjectPath):
            with d.open("wb") as dst:
                shutil.copyfileobj(src, dst, STREAM_BUFFER)
        else:
            with open(d, "wb") as dst:
                shutil.copyfileobj(src, dst, STREAM_BUFFER)


def download(src: str | os.PathLike | ObjectPath, local: str | os.PathLike) -> Path:
    """Copy `src` (an object, or a local file) to the local file `local` whole: written under a
    temp name and renamed, so a killed copy never looks complete. Returns `local`."""
    from shards.runlock import temp_path

    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(local)
    with open_input(src) as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out, STREAM_BUFFER)
    os.replace(tmp, local)
    return local


def staging_dir() -> Path:
    """A fresh local folder for files that are written whole, then uploaded (object stores take
    no appends). LONGCAP_STAGING_DIR picks where (default: the system temp folder). The folders
    of killed runs (named by pid; the pid is gone) are removed first."""
    from shards.runlock import _alive

    base = Path(os.environ.get("LONGCAP_STAGING_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("longcap-stage-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"longcap-stage-{os.getpid()}-", dir=base))


def mirror_dir(uri: str, kind: str) -> Path:
    """The local working copy of a run whose output is the URI `uri`: one folder per URI and
    kind (`run`: a training run, `build`: a build's ingest), under LONGCAP_STAGING_DIR, else the
    system temp folder, so that a rerun on this machine finds the same one."""
    import hashlib

    base = os.environ.get("LONGCAP_STAGING_DIR") or tempfile.gettempdir()
    return Path(base) / f"longcap-{kind}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


def write_marked(
    files: list[tuple[Path, AnyPath]], mark: str | os.PathLike | ObjectPath, mark_bytes: bytes
) -> None:
    """Publish a unit: each (finished local temp file, final path) goes into place, then the
    completion mark is written, never before. Locally: fsync, rename, fsync the folder, then the
    mark atomically. On an object store: upload every data object, then PUT the mark; the local
    temps are removed."""
    mark = as_path(mark)
    if isinstance(mark, Path):
        for tmp, final in files:
            fsync_file(tmp)
            os.replace(tmp, final)
        if files:
            # The data files' renames are durable before the mark that says they are complete.
            fsync_dir(Path(files[0][1]).parent)
        write_bytes(mark, mark_bytes)
        return
    for tmp, final in files:
        upload(tmp, final)
    write_bytes(mark, mark_bytes)
    for tmp, _final in files:
        Path(tmp).unlink(missing_ok=True)
