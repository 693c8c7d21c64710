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
