"""Optional DKIM signing: the signature verifies against the published key and covers the
one-click unsubscribe headers (RFC 8058 §4)."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import BASE_CONFIG, Harness

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def config_text(tmp_path: Path) -> str:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(PEM)
    return BASE_CONFIG.replace(
        "  bounce_domain: bounces.pharma.example\n",
        f"  bounce_domain: bounces.pharma.example\n  dkim: {{domain: pharma.example, selector: te2026, private_key_file: {key_file}}}\n",
    )


async def test_signed_mail_verifies_and_covers_list_unsubscribe(harness: Harness) -> None:
    assert (await harness.send())["status"] == "sent"
    [raw] = harness.smtp.raw
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(PUBLIC)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"te2026._domainkey.pharma.example."
        return record

    assert dkim.verify(raw, dnsfunc=dns)
    signature = harness.smtp.messages[0]["DKIM-Signature"]
    signed = signature.split("h=")[1].split(";")[0].replace(" ", "").lower().split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "subject"} <= set(signed)
    tampered = raw.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: nothing")
    assert not dkim.verify(tampered, dnsfunc=dns)
