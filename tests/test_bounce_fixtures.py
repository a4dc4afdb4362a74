"""The bounce corpus: real bounce messages from many mail systems (sources in
tests/fixtures/email/SOURCES.md), each with what a person reading it decides: the kind, the
reason and the recipients it reports. bench/bench_bounces.py reads the same expectations."""

from __future__ import annotations

from pathlib import Path

from core.bounces import classify_message

FIXTURES = Path(__file__).parent / "fixtures" / "email"


def expect(name: str, *, kind: str, reason: str, recipients: list[str]) -> None:
    verdict = classify_message((FIXTURES / name).read_bytes())
    assert (verdict.kind, verdict.reason, sorted(verdict.recipients)) == (kind, reason, sorted(recipients))


def test_dsn_hard_550() -> None:
    expect("dsn_hard_550.eml", kind="hard", reason="user_unknown",
           recipients=["dr.smith@clinic.example"])


def test_dsn_multiple_recipients() -> None:
    expect("dsn_multiple_recipients.eml", kind="hard", reason="user_unknown",
           recipients=[
        "cardio.desk@clinic.example",
        "oncology@north.clinic.example",
        "rheum@south.clinic.example",
    ])


def test_dsn_soft_delayed() -> None:
    expect("dsn_soft_delayed.eml", kind="soft", reason="system_error",
           recipients=["np.garcia@clinic.example"])


def test_nonstandard_bounce() -> None:
    expect("nonstandard_bounce.eml", kind="hard", reason="user_unknown",
           recipients=["rn.patel@legacy.clinic.example"])


def test_arf_abuse_complaint() -> None:
    expect("arf_abuse_complaint.eml", kind="complaint", reason="feedback",
           recipients=["dr.jones@clinic.example"])


def test_exim_user_unknown() -> None:
    expect("exim_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@its.example.nl"])


def test_exim_kundenserver_user_unknown() -> None:
    expect("exim_kundenserver_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.de"])


def test_exim_quota_exceeded() -> None:
    expect("exim_quota_exceeded.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.de"])


def test_exim_delayed_connection_failed() -> None:
    expect("exim_delayed_connection_failed.eml", kind="soft", reason="network_error",
           recipients=["user@example.com"])


def test_postfix_user_unknown() -> None:
    expect("postfix_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["xxxxx@local.ie"])


def test_postfix_dsn_user_unknown_status_500() -> None:
    expect("postfix_dsn_user_unknown_status_500.eml", kind="hard", reason="user_unknown",
           recipients=["anne.person@dom.ain"])


def test_postfix_mailbox_quota() -> None:
    expect("postfix_mailbox_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@mail1.example.com"])


def test_postfix_filter_command_died() -> None:
    expect("postfix_filter_command_died.eml", kind="soft", reason="mailer_error",
           recipients=["ttttt@ggggg.com"])


def test_postfix_delayed_quota_alias() -> None:
    expect("postfix_delayed_quota_alias.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.fi"])


def test_sendmail_user_unknown() -> None:
    expect("sendmail_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["joem@example.com"])


def test_sendmail_too_many_hops() -> None:
    expect("sendmail_too_many_hops.eml", kind="soft", reason="mailer_error",
           recipients=["zzzzz@nfg.nl", "zzzzz@shaft.coal.nl"])


def test_sendmail_broken_boundary_too_many_hops() -> None:
    expect("sendmail_broken_boundary_too_many_hops.eml", kind="soft", reason="mailer_error",
           recipients=["scoffman@wellpartner.com"])


def test_qmail_user_unknown() -> None:
    expect("qmail_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.jp"])


def test_qmail_outblaze_disk_quota() -> None:
    expect("qmail_outblaze_disk_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["ntl@xxx.com"])


def test_qmail_godaddy_mailfolder_full() -> None:
    expect("qmail_godaddy_mailfolder_full.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.com"])


def test_qmail_messagelabs_no_such_user() -> None:
    expect("qmail_messagelabs_no_such_user.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.au"])


def test_exchange_dsn_user_unknown() -> None:
    expect("exchange_dsn_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_exchange_forwarded_dsn_user_unknown() -> None:
    expect("exchange_forwarded_dsn_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_exchange2000_recipient_not_recognized() -> None:
    expect("exchange2000_recipient_not_recognized.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.edu"])


def test_exchange_recipient_not_recognized() -> None:
    expect("exchange_recipient_not_recognized.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_exchange_broken_mime_recipient_not_recognized() -> None:
    expect("exchange_broken_mime_recipient_not_recognized.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_iplanet_disk_quota() -> None:
    expect("iplanet_disk_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.com"])


def test_x400_maximum_time_expired() -> None:
    expect("x400_maximum_time_expired.eml", kind="soft", reason="expired",
           recipients=["zzzzz@example.uk"])


def test_dsn_message_too_big() -> None:
    expect("dsn_message_too_big.eml", kind="soft", reason="message_too_big",
           recipients=["userx@example.be"])


def test_dsn_delayed_no_answer_from_host() -> None:
    expect("dsn_delayed_no_answer_from_host.eml", kind="soft", reason="network_error",
           recipients=["userx@example.cz"])


def test_dsn_domain_does_not_exist() -> None:
    expect("dsn_domain_does_not_exist.eml", kind="hard", reason="host_unknown",
           recipients=["email@replaced.net"])


def test_teamware_bad_destination_mailbox() -> None:
    expect("teamware_bad_destination_mailbox.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.jp"])


def test_amavis_banned_attachment() -> None:
    expect("amavis_banned_attachment.eml", kind="block", reason="content_rejected",
           recipients=[
        "xxx@dot.ca.gov",
        "xxxxxx@dot.ca.gov",
        "xxxxxxx@dot.ca.gov",
        "xxxxxxxx@dot.ca.gov",
        "xxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxxxxxxx@dot.ca.gov",
        "xxxxxxxxxxxxxxxx@dot.ca.gov",
    ])


def test_gmail_unsolicited_mail() -> None:
    expect("gmail_unsolicited_mail.eml", kind="block", reason="spam_detected",
           recipients=["david...@gmail.com"])


def test_gmail_delayed() -> None:
    expect("gmail_delayed.eml", kind="soft", reason="undefined",
           recipients=["userx@example.com"])


def test_yahoo_over_quota() -> None:
    expect("yahoo_over_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.es"])


def test_yahoo_account_disabled() -> None:
    expect("yahoo_account_disabled.eml", kind="soft", reason="suspended",
           recipients=["userx@example.com"])


def test_yahoo_unknown_and_disabled() -> None:
    expect("yahoo_unknown_and_disabled.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com", "usery@example.com", "userz@example.com"])


def test_yahoo_aol_recipient_rejected() -> None:
    expect("yahoo_aol_recipient_rejected.eml", kind="hard", reason="user_unknown",
           recipients=["bad_user@aol.com"])


def test_aol_not_accepting_from_sender() -> None:
    expect("aol_not_accepting_from_sender.eml", kind="block", reason="blocked",
           recipients=["screenname@aol.com"])


def test_hotpop_over_disk_quota() -> None:
    expect("hotpop_over_disk_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.com"])


def test_mdaemon_mailbox_quota() -> None:
    expect("mdaemon_mailbox_quota.eml", kind="soft", reason="mailbox_full",
           recipients=["bbbsss@example.com"])


def test_mdaemon_user_unknown() -> None:
    expect("mdaemon_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.net.py"])


def test_airmail_unknown_host() -> None:
    expect("airmail_unknown_host.eml", kind="hard", reason="host_unknown",
           recipients=["userx@example.com"])


def test_sbcglobal_no_account() -> None:
    expect("sbcglobal_no_account.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.net"])


def test_prodigy_mailbox_full() -> None:
    expect("prodigy_mailbox_full.eml", kind="soft", reason="mailbox_full",
           recipients=["userx@example.net"])


def test_domino_not_listed() -> None:
    expect("domino_not_listed.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_mimesweeper_french_no_such_address() -> None:
    expect("mimesweeper_french_no_such_address.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.fr"])


def test_interscan_user_unknown() -> None:
    expect("interscan_user_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.be"])


def test_songbird_delayed_no_response() -> None:
    expect("songbird_delayed_no_response.eml", kind="soft", reason="network_error",
           recipients=["userx@example.com"])


def test_postponed_full_mailbox() -> None:
    expect("postponed_full_mailbox.eml", kind="soft", reason="mailbox_full",
           recipients=["calvin@example.com"])


def test_phquery_no_delivery_point() -> None:
    expect("phquery_no_delivery_point.eml", kind="hard", reason="user_unknown",
           recipients=["user@example.edu"])


def test_mailru_user_not_found() -> None:
    expect("mailru_user_not_found.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.ru"])


def test_earthlink_overquota() -> None:
    expect("earthlink_overquota.eml", kind="soft", reason="mailbox_full",
           recipients=["subscriber@earthlink.net"])


def test_smtp32_delivery_attempts() -> None:
    expect("smtp32_delivery_attempts.eml", kind="soft", reason="expired",
           recipients=["userx@example.ph"])


def test_smtp32_two_addressees_unknown() -> None:
    expect("smtp32_two_addressees_unknown.eml", kind="hard", reason="user_unknown",
           recipients=["after_another@example.net", "one_bad_address@example.net"])


def test_smtp32_invalid_userid() -> None:
    expect("smtp32_invalid_userid.eml", kind="hard", reason="user_unknown",
           recipients=["userx@example.com"])


def test_netscape_not_reachable_two_days() -> None:
    expect("netscape_not_reachable_two_days.eml", kind="soft", reason="expired",
           recipients=["aaaaa@corel.com", "bbbbb@corel.com"])


def test_demon_not_collected() -> None:
    expect("demon_not_collected.eml", kind="soft", reason="suspended",
           recipients=["userx@example.uk"])


def test_llnl_no_matching_address() -> None:
    expect("llnl_no_matching_address.eml", kind="hard", reason="user_unknown",
           recipients=["user1@example.gov"])


def test_usanet_processing_error() -> None:
    expect("usanet_processing_error.eml", kind="soft", reason="system_error",
           recipients=["userx@example.net"])


def test_lsmtp_message_looping() -> None:
    expect("lsmtp_message_looping.eml", kind="soft", reason="mailer_error",
           recipients=["userx@example.com"])


def test_autoreply_spanish() -> None:
    expect("autoreply_spanish.eml", kind="auto_reply", reason="vacation",
           recipients=["contact@example.com"])


def test_person_reply_not_a_bounce() -> None:
    expect("person_reply_not_a_bounce.eml", kind="not_a_bounce", reason="not_a_bounce",
           recipients=[])


def test_dragonfly_dmarc_rejected() -> None:
    expect("dragonfly_dmarc_rejected.eml", kind="block", reason="auth_failure",
           recipients=["pseudo-local-part@google.example.com"])


def test_apple_recipient_no_longer_on_server() -> None:
    expect("apple_recipient_no_longer_on_server.eml", kind="hard", reason="has_moved",
           recipients=["kijitora@example.jp"])


def test_mimecast_host_network_not_allowed() -> None:
    expect("mimecast_host_network_not_allowed.eml", kind="block", reason="blocked",
           recipients=["sabatora@example.com"])


def test_yahoo_policy_reasons() -> None:
    expect("yahoo_policy_reasons.eml", kind="block", reason="policy",
           recipients=["kijitora@aol.example.jp"])


def test_docomo_unknown_user() -> None:
    expect("docomo_unknown_user.eml", kind="hard", reason="user_unknown",
           recipients=["azumakuniyuki@ntt.docomo.example.ne.jp"])


def test_hotmail_jmrp_complaint() -> None:
    expect("hotmail_jmrp_complaint.eml", kind="complaint", reason="feedback",
           recipients=["kijitora@example.com"])


def test_exchange2007_recipient_not_found() -> None:
    expect("exchange2007_recipient_not_found.eml", kind="hard", reason="user_unknown",
           recipients=["mikeneko@example.co.jp"])


def test_amazonses_spectrum_sender_rejected() -> None:
    expect("amazonses_spectrum_sender_rejected.eml", kind="block", reason="blocked",
           recipients=["theusername@charter.net"])
