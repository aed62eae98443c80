"""Which MLflow tracking URIs the exporter accepts, its default, and how one is shown in logs and spool files."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

HTTP_SCHEMES = ("http", "https")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else MLflow 3's own default: ``sqlite:///mlflow.db`` in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> str:
    """Raises ``ValueError`` for a URI MLflow cannot use, so the mistake shows at construction."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"tracking_uri must be a non-empty MLflow tracking URI, got {uri!r}")
    uri = uri.strip()
    scheme = urlsplit(uri).scheme
    if scheme in HTTP_SCHEMES:
        if not urlsplit(uri).hostname:
            raise ValueError(f"tracking_uri {uri!r} has no host")
        return uri
    # MLflow 3 refuses the file store unless asked; say so now rather than on the sender thread.
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise ValueError(
            f"tracking_uri {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///path/mlflow.db "
            "or an http(s):// tracking server"
        )
    return uri


def public_uri(uri: str) -> str:
    """The URI without embedded credentials, fit for logs and spool files."""
    parts = urlsplit(uri)
    if parts.scheme in HTTP_SCHEMES and (parts.username or parts.password):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=host).geturl()
    return uri
