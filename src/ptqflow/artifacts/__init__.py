"""ptqflow.artifacts: manifests, and staging artifacts between URIs (paths, file://, s3://) and local dirs."""

from ptqflow.artifacts.manifest import Manifest, read_manifest, write_manifest  # noqa: F401
from ptqflow.artifacts.storage import (  # noqa: F401
    is_s3,
    parse_uri,
    publish,
    read_remote_manifest,
    stage_in,
)


def input_digests(inputs) -> dict[str, str]:
    """``{name: digest}`` of the manifests of staged input directories; InputError for a directory
    without a manifest (not a finished artifact)."""
    from ptqflow.errors import InputError

    digests = {}
    for name, path in inputs.items():
        m = read_manifest(path)
        if m is None:
            raise InputError(f"input '{name}' at {path} has no manifest.json: not a finished ptqflow artifact")
        digests[name] = m.digest
    return digests


def reproducible_zip(path) -> None:
    """Rewrite a zip file (e.g. an ``.npz`` from ``np.savez``) with fixed member timestamps and order.

    ``np.savez`` stamps each member with the current time, so identical arrays saved twice differ in bytes
    and an artifact's digest would change on every rerun; after this call equal contents give equal bytes.
    """
    import os
    import zipfile
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(path.name + ".reproducible.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            with src.open(info) as fin, dst.open(fixed, "w", force_zip64=True) as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
    os.replace(tmp, path)
