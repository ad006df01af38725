"""What is handed to a build (CA bundle, index credentials) must appear nowhere in the image."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from tests.e2e.conftest import build

SECRET_TAG = "mlimg-test/secret:e2e"


def unique_certificate() -> tuple[str, str]:
    """A fresh self-signed certificate (PEM) and a line of its body to search for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mlimg-e2e-{uuid.uuid4().hex}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return pem, pem.splitlines()[3]


def index_url_with_credentials(token: str) -> str:
    """pip's default index, with a user and token that it ignores but that must not leak."""
    from pip._internal.models.index import PyPI

    parts = urlsplit(PyPI.simple_url)
    return parts._replace(netloc=f"mlimg-e2e:{token}@{parts.netloc}").geturl()


def image_contains(image, needles: list[bytes]) -> list[bytes]:
    """Which needles occur in `docker save` of the image (layers and config), read as a stream."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles) - 1
    previous = b""
    for chunk in image.save(named=True):
        window = previous + chunk
        found.update(n for n in needles if n in window)
        previous = window[-overlap:]
    return sorted(found)


def test_ca_bundle_and_index_credentials_stay_out_of_the_image(
    docker_client, sklearn_model: Path, ca_cert: Path, tmp_path: Path
) -> None:
    pem, cert_line = unique_certificate()
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text(ca_cert.read_text().rstrip("\n") + "\n" + pem)
    token = f"tok-{uuid.uuid4().hex}"
    result = build(
        sklearn_model, SECRET_TAG, bundle, "--pip-index-url", index_url_with_credentials(token)
    )
    assert result.returncode == 0, result.stderr
    assert token not in result.stderr + result.stdout

    image = docker_client.images.get(SECRET_TAG)
    history = " ".join(str(layer.get("CreatedBy", "")) for layer in image.history())
    assert token not in history and "ca-bundle" not in history
    assert not any(token in env for env in image.attrs["Config"]["Env"])
    needles = [token.encode(), cert_line.encode(), b"/tmp/mlimg/ca-bundle.pem", b"corporate-ca"]
    assert image_contains(image, needles) == []
