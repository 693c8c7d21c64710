"""Where artifacts live: plain paths, ``file://`` URIs and ``s3://bucket/prefix``.

Steps only see local directories; this module stages inputs in (``stage_in``), publishes outputs
(``publish``: every file first, ``manifest.json`` last) and reads a manifest where it lies
(``read_remote_manifest``), so the pipeline can skip a step whose identical run already finished.

S3 settings come from the standard AWS environment and config files (credentials, region, IRSA, instance
roles); ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` point at S3-compatible servers. Retries use
botocore's "standard" mode (``AWS_MAX_ATTEMPTS``, default 5). Every S3 failure becomes a StorageError
(exit code 5, safe to retry) naming the URI: a missing object may be an upstream step still publishing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ptqflow.artifacts.manifest import MANIFEST_NAME, Manifest
from ptqflow.errors import ConfigError, InputError, OutputError, PtqflowError, StorageError
from ptqflow.logs import get_logger
from ptqflow.scratch import scratch_dir, scratch_root  # noqa: F401 (the steps' and the runner's names for them)

_MB = 1 << 20
log = get_logger("artifacts")


@dataclass(frozen=True)
class Location:
    """A parsed artifact URI: ``scheme`` is "file" (``path`` set) or "s3" (``bucket``/``key`` set)."""

    scheme: str
    uri: str
    path: Path | None = None
    bucket: str = ""
    key: str = ""

    def join(self, *parts: str) -> "Location":
        """The location of a child path (``<uri>/<part>/...``)."""
        rel = "/".join(p.strip("/") for p in parts if p)
        if self.scheme == "file":
            return Location("file", f"{self.uri.rstrip('/')}/{rel}", path=self.path / rel)
        key = f"{self.key.rstrip('/')}/{rel}" if self.key else rel
        return Location("s3", f"s3://{self.bucket}/{key}", bucket=self.bucket, key=key)


def parse_uri(uri: str) -> Location:
    """Parse a plain path, ``file://`` or ``s3://`` URI; ConfigError for any other scheme."""
    if not uri:
        raise ConfigError("empty artifact URI")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        return Location("s3", uri, bucket=parsed.netloc, key=parsed.path.lstrip("/").rstrip("/"))
    if parsed.scheme == "file":
        return Location("file", uri, path=Path(unquote(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # a Windows drive letter is not a scheme
        raise ConfigError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r} (use a path, file:// or s3://)")
    return Location("file", uri, path=Path(uri).expanduser())


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith("s3://")


# --------------------------------------------------------------------------------------------------
# S3 client and error mapping
# --------------------------------------------------------------------------------------------------


def s3_client():
    """A boto3 S3 client configured from the environment (endpoint, region, retries, addressing style)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the s3 extra is missing
        raise ConfigError("s3:// URIs need boto3: pip install 'ptqflow[s3]'") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(
        retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
                 "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))},
        connect_timeout=float(os.environ.get("PTQFLOW_S3_CONNECT_TIMEOUT", "10")),
        read_timeout=float(os.environ.get("PTQFLOW_S3_READ_TIMEOUT", "120")),
        # S3-compatible servers on an IP or a private host name only understand path-style addressing.
        s3={"addressing_style": os.environ.get("PTQFLOW_S3_ADDRESSING_STYLE", "path" if endpoint else "auto")},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    if endpoint and not region:
        region = "us-east-1"  # S3-compatible servers need some region to sign with
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def transfer_config():
    """Multipart settings: parts of 64 MiB (``PTQFLOW_S3_PART_MB``), four parallel transfers."""
    from boto3.s3.transfer import TransferConfig

    part = int(os.environ.get("PTQFLOW_S3_PART_MB", "64")) * _MB
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)


def _storage_error(err: Exception, uri: str, action: str) -> StorageError:
    """A StorageError naming the URI and the S3 error code for any botocore/boto3 failure."""
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
    hints = {
        "NoSuchBucket": "the bucket does not exist",
        "NoSuchKey": "no such object",
        "404": "no such object",
        "403": "access denied (check credentials and permissions)",
        "AccessDenied": "access denied (check credentials and permissions)",
        "InvalidAccessKeyId": "unknown access key (check AWS_ACCESS_KEY_ID)",
        "SignatureDoesNotMatch": "signature mismatch (check AWS_SECRET_ACCESS_KEY)",
    }
    name = type(err).__name__
    if name == "NoCredentialsError":
        hint = "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile/role)"
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
        hint = f"cannot reach the S3 endpoint ({err})"
    else:
        hint = hints.get(code, str(err))
    return StorageError(f"S3 {action} failed for {uri}: {hint}")


def _s3_errors():
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


def _list_keys(client, bucket: str, prefix: str) -> list[dict]:
    """Every object under ``prefix`` (paginated): dicts with Key and Size."""
    items: list[dict] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items.extend(page.get("Contents", []))
    return items


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def stage_in(uri: str, dest: Path) -> Path:
    """Make the artifact or data set at ``uri`` available locally and return its local path.

    Local paths are returned as they are (no copy). For S3, a prefix holding objects is downloaded into
    ``dest`` (a directory); a single object is downloaded to ``dest/<its name>``. A URI with nothing there
    raises InputError (local) or StorageError (S3, naming the URI).
    """
    loc = parse_uri(uri)
    if loc.scheme == "file":
        if not loc.path.exists():
            raise InputError(f"{uri}: no such file or directory")
        return loc.path
    client = s3_client()
    dest = Path(dest)
    try:
        prefix = f"{loc.key}/" if loc.key else ""
        items = _list_keys(client, loc.bucket, prefix)
        if items:
            for item in items:
                rel = item["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue  # a "directory marker" object
                target = _safe_child(dest, rel, uri)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(loc.bucket, item["Key"], str(target), Config=transfer_config())
            return dest
        if not loc.key:
            raise StorageError(f"S3 download failed for {uri}: the bucket is empty")
        client.head_object(Bucket=loc.bucket, Key=loc.key)
        target = dest / loc.key.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(loc.bucket, loc.key, str(target), Config=transfer_config())
        return target
    except _s3_errors() as err:
        raise _storage_error(err, uri, "download") from None


def _safe_child(root: Path, rel: str, uri: str) -> Path:
    """``root/rel``, refusing keys such as ``../x`` that would land outside ``root``."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(f"{uri}: object key {rel!r} points outside the download directory")
    return root / rel


def publish(local_dir: Path, uri: str) -> None:
    """Copy the artifact in ``local_dir`` to ``uri``: every file first, ``manifest.json`` last.

    Local targets are filled in a temporary sibling directory and renamed into place, so a reader sees
    either the old artifact or the complete new one. S3 targets get stale objects under the prefix that the
    new artifact does not contain removed first (the manifest with them), then the files, then the manifest.
    """
    local_dir = Path(local_dir)
    loc = parse_uri(uri)
    if loc.scheme == "file":
        if loc.path.exists() and loc.path.resolve() == local_dir.resolve():
            return
        tmp = make_partial_dir(loc.path)
        try:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise output_error(err, loc.path) from None
        replace_dir(tmp, loc.path)
        return
    client = s3_client()
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    try:
        prefix = f"{loc.key}/" if loc.key else ""
        keep = {f"{prefix}{p.relative_to(local_dir).as_posix()}" for p in files}
        stale = [i["Key"] for i in _list_keys(client, loc.bucket, prefix) if i["Key"] not in keep]
        # The old manifest goes first: from here on, no reader trusts the prefix until the new one lands.
        stale.sort(key=lambda k: k != f"{prefix}{MANIFEST_NAME}")
        for key in stale:
            client.delete_object(Bucket=loc.bucket, Key=key)
        for p in files:
            key = f"{prefix}{p.relative_to(local_dir).as_posix()}"
            client.upload_file(str(p), loc.bucket, key, Config=transfer_config())
        manifest = local_dir / MANIFEST_NAME
        if manifest.is_file():
            client.upload_file(str(manifest), loc.bucket, f"{prefix}{MANIFEST_NAME}")
    except _s3_errors() as err:
        raise _storage_error(err, uri, "upload") from None


def read_remote_manifest(uri: str) -> Manifest | None:
    """The manifest at ``uri`` (local or S3), or None when there is none. Storage failures raise."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        from ptqflow.artifacts.manifest import read_manifest

        try:
            return read_manifest(loc.path) if loc.path.is_dir() else None
        except InputError as err:  # a damaged manifest is no manifest: the step reruns
            log.warning("ignoring unreadable manifest at %s: %s", uri, err)
            return None
    client = s3_client()
    key = f"{loc.key}/{MANIFEST_NAME}" if loc.key else MANIFEST_NAME
    try:
        body = client.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    except _s3_errors() as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "") if hasattr(err, "response") else ""
        if code in ("NoSuchKey", "404"):
            return None
        raise _storage_error(err, uri, "manifest read") from None
    try:
        return manifest_from_json(body.decode("utf-8"))
    except (ValueError, TypeError) as err:
        log.warning("ignoring unreadable manifest at %s: %s", uri, err)
        return None


def manifest_from_json(text: str) -> Manifest:
    """Parse manifest JSON (the ``digest`` field is derived, so it is dropped)."""
    d = json.loads(text)
    d.pop("digest", None)
    return Manifest(**d)


def remote_outputs_intact(uri: str, manifest: Manifest) -> list[str]:
    """Output files at ``uri`` whose presence or size disagree with the manifest (empty: intact).

    Local artifacts are checked by sha256 as well; S3 objects by size (a full hash would mean a download).
    """
    loc = parse_uri(uri)
    if loc.scheme == "file":
        from ptqflow.artifacts.manifest import verify_outputs

        return verify_outputs(loc.path, manifest)
    client = s3_client()
    prefix = f"{loc.key}/" if loc.key else ""
    try:
        sizes = {i["Key"][len(prefix):]: i["Size"] for i in _list_keys(client, loc.bucket, prefix)}
    except _s3_errors() as err:
        raise _storage_error(err, uri, "listing") from None
    return [rel for rel, info in manifest.outputs.items() if sizes.get(rel) != info["size"]]


# --------------------------------------------------------------------------------------------------
# Local atomic directories
# --------------------------------------------------------------------------------------------------

PARTIAL_MARK = ".partial-"  # in the name of a directory being filled before it replaces its target
ASIDE_MARK = ".old-"  # in the name of a replaced directory moved aside before removal


def output_error(err: OSError, path) -> PtqflowError:
    """The error for failing to write the output at ``path``: OutputError (exit 2, naming the path) when
    retrying cannot help (a file where a directory must go, a read-only file system, no permission),
    StorageError (exit 5, retryable) for the rest (a full disk, an I/O error)."""
    why = {
        errno.EEXIST: "a file of that name is in the way (an output location must be a directory)",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }
    where = str(err.filename or "")
    # A path component in the way is worth naming; ptqflow's own partial directories are not.
    internal = where == str(path) or any(PARTIAL_MARK in part or ASIDE_MARK in part for part in Path(where).parts)
    detail = f" (at {where})" if where and not internal else ""
    if err.errno in why:
        return OutputError(f"output {path}: cannot write there: {why[err.errno]}{detail}")
    return StorageError(f"output {path}: writing failed: {err.strerror or err}{detail}")


def make_partial_dir(target: Path) -> Path:
    """A fresh temporary sibling of ``target`` to fill before ``replace_dir``; stale ones of dead
    processes (killed runs) are removed first. OutputError/StorageError naming ``target`` when it cannot be
    made (a file in the way, a read-only or forbidden location)."""
    target = Path(target)
    if target.is_file():  # caught here, before any work: replace_dir would only find it at the end
        raise OutputError(f"output {target}: a file of that name is in the way (an output location must be a "
                          "directory)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
            pid = old.name.rsplit("-", 2)[-2] if old.name.count("-") >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}{os.getpid()}-", dir=target.parent))
    except OSError as err:
        raise output_error(err, target) from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)  # mkdtemp makes it private; the published artifact should not be
    return path


def is_ptqflow_dir(d: Path) -> bool:
    """True for a local directory that ptqflow wrote: a step artifact (it holds a ptqflow manifest) or the
    hidden partial / moved-aside directory of a publish in progress. Walks of a model or data directory
    leave these out, so an ``--output`` inside it does not feed a rerun."""
    d = Path(d)
    if d.name.startswith(".") and (PARTIAL_MARK in d.name or ASIDE_MARK in d.name):
        return True
    from ptqflow.artifacts.manifest import read_manifest

    try:
        return read_manifest(d) is not None
    except Exception:  # a manifest.json of another format: not ours
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(target: Path) -> None:
    """OutputError unless an artifact may replace ``target``: it is absent, an empty directory or an earlier
    ptqflow artifact (it holds a manifest.json). A file, or a directory of other files, is never deleted."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputError(f"output {target}: a file of that name is in the way (an output location must be a "
                          "directory)")
    if target.is_dir() and not (target / MANIFEST_NAME).is_file() and any(target.iterdir()):
        raise OutputError(f"output {target}: a directory of other files, not a ptqflow artifact; refusing to "
                          "replace it (choose a new or empty directory)")


def replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing an existing artifact (moved aside, then removed); OutputError
    when ``target`` is something else (``check_replaceable``)."""
    target = Path(target)
    check_replaceable(target)
    try:
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}{ASIDE_MARK}", dir=target.parent))
            os.replace(target, aside / "old")
            os.replace(new, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(new, target)
    except OSError as err:
        raise output_error(err, target) from None


