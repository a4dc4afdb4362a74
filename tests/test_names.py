"""RFC 2047 encoded words in HCP names (left by mail-system exports and some CRMs) are decoded
before use: what the HCP reads in the Subject is their name, not `=?utf-8?q?…?=`."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from core.db import hcps
from core.names import decode_encoded_words
from core.npi import make_npi
from tests.harness import OMAR, Harness, drain, load_directory

NEW = make_npi("600000001")


def test_decoding() -> None:
    assert decode_encoded_words("=?utf-8?q?M=C3=BCller?=") == "Müller"
    assert decode_encoded_words("=?UTF-8?B?SsO8cmdlbg==?= Schmidt") == "Jürgen Schmidt"
    assert decode_encoded_words("=?iso-8859-1?q?Fran=E7ois?=") == "François"
    assert decode_encoded_words("Plain =? not encoded") == "Plain =? not encoded"
    assert decode_encoded_words("=?x-unknown?q?abc?=") == "=?x-unknown?q?abc?="


async def test_encoded_names_from_the_directory_reach_the_subject_decoded(harness: Harness, tmp_path: Path) -> None:
    await load_directory(harness.rt, tmp_path, "npi,first_name,last_name,credential,specialty,state,email\n"
                         f"{NEW},=?UTF-8?B?SsO8cmdlbg==?=,=?utf-8?q?M=C3=BCller?=,MD,Cardiology,NY,jm@heart.example\n")
    outcome = await harness.send(NEW, "cardio-webinar")
    assert outcome["status"] == "queued" or outcome["status"] == "sent", outcome
    [email] = harness.smtp.to("jm@heart.example")
    assert str(email["Subject"]) == "Dr. Müller, join our webinar"
    assert "Webinar for Jürgen Müller" in email.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert outcome["messages"][0]["subject"] == "Dr. Müller, join our webinar"


async def test_names_stored_encoded_before_are_decoded_when_rendered(harness: Harness) -> None:
    async with harness.rt.db.begin() as connection:
        await connection.execute(update(hcps).where(hcps.c.npi == OMAR).values(last_name="=?utf-8?q?Hadd=C3=A4d?="))
    accepted = await harness.trigger(OMAR, "cardio-webinar")
    await drain(harness.rt)
    [email] = harness.smtp.to("omar.haddad@heart.example")
    assert "Webinar for Omar Haddäd" in email.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert (await harness.outcome(accepted["id"]))["messages"][0]["subject"] == "Dr. Haddäd, join our webinar"
