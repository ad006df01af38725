"""The one place where a model URI becomes a local model directory.

Only local paths and `file://` URIs are resolved here for now; every other scheme is refused
with a message that says so, so that adding one means adding a branch here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlimg.errors import ModelNotFound

# A scheme of two or more letters: "C:\\model" on Windows is a path, not a URI.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI and the local directory that holds its files."""

    uri: str
    path: Path
    run_id: str | None = None
    registered_version: str | None = None


def resolve_model_uri(uri: str) -> ResolvedModel:
    """Resolve a model URI to a local directory, or say why it names nothing."""
    if not uri or not uri.strip():
        raise ModelNotFound("no model given: pass -m PATH or -m URI")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ModelNotFound(f"{uri}: file:// URIs must name a local path (no host)")
        path = Path(unquote(parsed.path))
    elif scheme:
        raise ModelNotFound(
            f"{uri}: model URIs with scheme '{scheme}:' are not supported yet; "
            "download the model and pass its local directory"
        )
    else:
        path = Path(uri).expanduser()
    if not path.exists():
        raise ModelNotFound(f"no model at {path}: no such file or directory")
    if not path.is_dir():
        raise ModelNotFound(
            f"{path} is a file; pass the model's directory (the one holding MLmodel)"
        )
    return ResolvedModel(uri=uri, path=path.resolve())
