"""One classifier for every delivery failure: the SMTP answer at send time (connect, MAIL,
RCPT, DATA) and the reports that come back later (RFC 3464 DSNs, non-standard bounces,
RFC 5965 feedback reports, RFC 3834 auto-replies).

A failure gets a `reason` from a fixed taxonomy and a `kind` that says what to do:

- `hard`: the address itself is gone (mark it, send the same email to the next address);
- `soft`: the mailbox or the path is in trouble for now (count; too many in a window = hard);
- `block`: the receiver refuses *us* (our IP, our domain, our content, our rate): the
  address is fine, so it is never marked; the receiving domain is slowed or paused;
- `complaint`, `auto_reply`, `not_a_bounce`.

The first digit of a reply decides nothing on its own. Receivers put a blocklisting of our
IP under `550 5.7.606`, a DMARC failure under `550 5.7.26`, a full mailbox under
`552 5.2.2` and a rate limit under `550 5.1.0 too many connections`; calling every 5xx hard
would burn good HCP addresses by the thousand. So the enhanced status code (RFC 3463, plus
the registered and vendor extensions) and the diagnostic text decide together, and a
"hard" verdict needs positive evidence that the *address* is the problem.

Pure functions, no I/O: the mailer, the bounce listener, the CLI and the benchmark all call
`classify()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Classification", "Kind", "REASONS", "classify", "kind_of"]

Kind = Literal["hard", "soft", "block", "complaint", "auto_reply", "not_a_bounce"]

REASONS: dict[str, Kind] = {
    # the address is gone
    "user_unknown": "hard",
    "host_unknown": "hard",
    "has_moved": "hard",
    "not_accepted": "hard",
    # the mailbox or the path is in trouble for now
    "mailbox_full": "soft",
    "message_too_big": "soft",
    "suspended": "soft",
    "expired": "soft",
    "system_error": "soft",
    "network_error": "soft",
    "mailer_error": "soft",
    "undefined": "soft",
    # the receiver refuses us
    "blocked": "block",
    "rate_limited": "block",
    "auth_failure": "block",
    "policy": "block",
    "spam_detected": "block",
    "content_rejected": "block",
    "virus_detected": "block",
    # not a failure of delivery
    "feedback": "complaint",
    "vacation": "auto_reply",
    "delivered": "not_a_bounce",
    "not_a_bounce": "not_a_bounce",
}
"""Every reason and the kind it normally has. A hard reason under a transient (4.x.x)
status is soft: the receiver itself says it may work later."""


def kind_of(reason: str) -> Kind:
    return REASONS.get(reason, "soft")


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str
    status: str | None = None
    """The enhanced status code (`5.1.1`), when there is one."""
    code: int | None = None
    """The SMTP reply code (`550`), when there is one."""

    @property
    def permanent(self) -> bool:
        return self.kind == "hard"


# --- enhanced status codes -------------------------------------------------------------

_STATUS = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
"""A status in free text: 4.x.x or 5.x.x only, since "2.0.12" in a text is a version."""
_REPLY = re.compile(r"^\s*([245][0-5]\d)(?:[ -]|$)")
_REPLY_ANYWHERE = re.compile(r"(?<![\w.#-])([245][0-5]\d)(?:[ -](?=[245]\.\d)|\s)")

_BY_STATUS: dict[str, str] = {
    # X.1 addressing (RFC 3463 3.2, RFC 7505)
    "1.1": "user_unknown", "1.2": "host_unknown", "1.3": "user_unknown", "1.4": "user_unknown",
    "1.5": "not_a_bounce", "1.6": "has_moved", "1.7": "policy", "1.8": "auth_failure",
    "1.9": "system_error", "1.10": "not_accepted",
    # X.2 mailbox
    "2.1": "suspended", "2.2": "mailbox_full", "2.3": "message_too_big", "2.4": "system_error",
    # X.3 mail system
    "3.0": "system_error", "3.1": "system_error", "3.2": "system_error", "3.3": "content_rejected",
    "3.4": "message_too_big", "3.5": "system_error",
    # X.4 network and routing
    "4.0": "network_error", "4.1": "network_error", "4.2": "network_error", "4.3": "network_error",
    "4.4": "host_unknown", "4.5": "system_error", "4.6": "mailer_error", "4.7": "expired",
    # X.5 protocol
    "5.0": "mailer_error", "5.1": "mailer_error", "5.2": "mailer_error", "5.3": "mailer_error",
    "5.4": "mailer_error", "5.5": "mailer_error", "5.6": "mailer_error",
    # X.6 content
    "6.0": "content_rejected", "6.1": "content_rejected", "6.2": "content_rejected",
    "6.3": "content_rejected", "6.4": "content_rejected", "6.5": "content_rejected",
    # X.7 security and policy (RFC 3463, RFC 7372, RFC 8601, vendor codes)
    "7.0": "policy", "7.1": "policy", "7.2": "policy", "7.3": "policy", "7.4": "policy",
    "7.5": "auth_failure", "7.6": "auth_failure", "7.7": "auth_failure", "7.8": "auth_failure",
    "7.9": "auth_failure", "7.10": "auth_failure", "7.11": "auth_failure", "7.12": "auth_failure",
    "7.13": "suspended", "7.14": "policy", "7.15": "auth_failure", "7.16": "auth_failure",
    "7.17": "suspended", "7.18": "suspended", "7.19": "suspended", "7.20": "auth_failure",
    "7.21": "auth_failure", "7.22": "auth_failure", "7.23": "auth_failure", "7.24": "auth_failure",
    "7.25": "auth_failure", "7.26": "auth_failure", "7.27": "not_accepted", "7.28": "rate_limited",
    "7.29": "auth_failure", "7.30": "auth_failure",
    # Microsoft: 5.7.5xx/6xx/7xx are blocklists, tenant and IP reputation
    "7.500": "blocked", "7.501": "blocked", "7.502": "blocked", "7.503": "blocked",
    "7.504": "policy", "7.505": "policy", "7.506": "blocked", "7.507": "blocked",
    "7.508": "blocked", "7.509": "auth_failure", "7.510": "blocked", "7.511": "blocked",
    "7.512": "content_rejected", "7.513": "blocked", "7.514": "blocked", "7.515": "auth_failure",
    "7.520": "policy", "7.606": "blocked", "7.607": "blocked", "7.608": "blocked",
    "7.609": "blocked", "7.700": "blocked", "7.705": "blocked", "7.708": "blocked",
    "7.750": "blocked", "7.751": "blocked", "7.650": "rate_limited",
}
_GENERIC = {"0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "7.0", "7.1", "1.9"}
"""Codes that say only which area failed; the text says more, so the text wins."""

_BY_REPLY: dict[int, str] = {
    421: "system_error", 450: "system_error", 451: "system_error", 452: "mailbox_full",
    550: "undefined", 551: "has_moved", 552: "mailbox_full", 553: "user_unknown", 554: "undefined",
    521: "not_accepted", 556: "not_accepted", 530: "auth_failure", 535: "auth_failure",
    500: "mailer_error", 501: "mailer_error", 502: "mailer_error", 503: "mailer_error", 504: "mailer_error",
}


# --- what the text says ----------------------------------------------------------------
# Ordered: the first pattern that matches decides. Refusals of *us* come first: a
# blocklisting message often also says "rejected" or "recipient", and confusing the two is
# the one mistake that burns good addresses.

def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts), re.IGNORECASE)


_TEXT_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("virus_detected", _rx(r"\bvirus(?!wall| ?scan)", r"malware", r"infected", r"\btrojan")),
    ("rate_limited", _rx(
        r"too many (?:connections|messages|recipients|mails|emails|concurrent|sessions|errors)",
        r"rate[- ]?limit", r"\bthrottl", r"try (?:again )?later.*(?:volume|rate)",
        r"(?:unusual|high) (?:rate|volume)", r"exceeded .*(?:rate|limit|quota) .*(?:sender|sending|connections)",
        r"receiving mail at a rate", r"temporarily deferred", r"\bTS0[1-4]\b", r"4\.7\.28", r"RP-00[1-3]",
        r"connection (?:limit|rate)", r"sending rate", r"too fast",
    )),
    ("auth_failure", _rx(
        r"\bSPF\b", r"\bDKIM\b", r"\bDMARC\b", r"sender (?:address )?(?:verify|verification) failed",
        r"authentication (?:failed|required|checks)", r"not authenticated", r"unauthenticated",
        r"sender (?:domain|address) (?:does not|doesn't) (?:exist|resolve)", r"reverse (?:dns|lookup)",
        r"\bPTR\b", r"\bhelo\b.*(?:reject|invalid)",
    )),
    ("spam_detected", _rx(
        r"\bspam\b", r"spam(?:my|like)", r"\bunsolicited", r"\bjunk\b", r"\bbulk mail", r"phish",
        r"suspicious", r"looks like spam", r"\bUBE\b", r"scored too high", r"content filter(?:ing)? .*spam",
    )),
    ("content_rejected", _rx(
        r"\bcontent\b.{0,40}(?:reject|refus|not accepted|violat|filter)", r"banned (?:file|attachment|content)", r"\bBANNED:", r"message (?:content|body) (?:rejected|refused)",
        r"(?:attachment|file type).{0,30}(?:not allowed|blocked|rejected|prohibited)", r"\bobjectionable",
        r"\bprohibited\b", r"url.{0,20}(?:blocked|listed)",
    )),
    ("blocked", _rx(
        r"block ?list", r"black ?list", r"\bblock(?:ed|ing)\b", r"\bbanned\b", r"\bdenylist",
        r"spamhaus", r"spamcop", r"\bbarracuda", r"\bsorbs\b", r"\brbl\b", r"\bdnsbl\b", r"\bsurbl\b",
        r"\bs3150\b", r"\bs3140\b", r"\bAUP#", r"\bpoor reputation", r"ip reputation", r"sender reputation",
        r"\b(?:ip|host|client|network)\b.{0,40}\b(?<!not )(?:listed|reputation)\b", r"(?<!not )\blisted (?:at|on|by)\b",
        r"not accepting (?:e-?)?mail from", r"(?:host|network|ip|client) (?:network )?not allowed", r"(?<!not )listed in (?:the )?(?:rbl|dnsbl|spam|black|block)",
        r"refused to talk to me", r"access denied,? (?:banned|blocked)", r"\bCON:B1\b",
        r"not allowed to send", r"your (?:ip|server|host)", r"sending (?:ip|host|server)",
        r"messages from \[?\d", r"\bIPTS0",
    )),
    ("not_accepted", _rx(r"null mx", r"does not accept (?:e-?)?mail", r"domain (?:does not|doesn't) receive")),
    ("has_moved", _rx(
        r"\bhas moved\b", r"\bmoved to\b", r"no longer (?:with|at|employed|working|in use|used|active)",
        r"(?:address|mailbox|account) (?:has been )?(?:changed|retired)", r"user has left", r"please update your",
    )),
    ("mailbox_full", _rx(
        r"(?:mailbox|mail ?folder|inbox|mail ?box) (?:is )?full", r"over ?quota", r"(?:mail ?box|disk) space not enough",
        r"not enough (?:disk |storage )?space", r"exceed\w* (?:the )?(?:mailbox|disk) (?:quota|size|limit)", r"(?:over|exceed\w*)(?: (?:their|his|her|its|the|disk|storage|mailbox))? quota",
        r"quota exceeded", r"\bquota\b", r"insufficient (?:system )?storage", r"\bfull\b.*mailbox",
        r"mailbox .*\bfull\b", r"mail ?box size limit", r"out of (?:disk|storage) space", r"storage (?:limit|space)",
        r"too much mail", r"maildir over",
    )),
    ("message_too_big", _rx(
        r"(?:message|mail|email) (?:is )?too (?:big|large)", r"message size", r"size limit", r"exceeds? .*size",
        r"message length exceeds", r"too large",
    )),
    ("suspended", _rx(
        r"not been collected", r"has not been (?:read|accessed|used)", r"dormant",
        r"\b(?:account|mailbox|user|address|recipient)\b.{0,30}\b(?:disabled|deactivated|inactive|suspended|locked|frozen|closed|expired)",
        r"(?:disabled|inactive|suspended|deactivated|frozen) (?:account|mailbox|user|recipient)",
        r"this mailbox is disabled", r"\b554\.30\b", r"account (?:has been )?(?:suspended|disabled)",
    )),
    ("host_unknown", _rx(
        r"host (?:or domain name )?not found", r"domain (?:name )?not found", r"no such (?:host|domain)",
        r"unknown (?:host|domain)", r"unrouteable (?:mail )?(?:address|domain)", r"\bnxdomain\b",
        r"name or service not known", r"host unknown", r"domain (?:does not|doesn't) exist",
        r"no (?:mx|a) (?:or (?:a|aaaa) )?records?", r"no mail ?servers? for", r"unroutable", r"no route to host for",
        r"dns (?:error|lookup) .*(?:not found|no such|domain)", r"couldn't find any host",
        r"all relevant mx records point to non-existent hosts", r"not a valid domain", r"domain is not (?:valid|configured)",
    )),
    ("user_unknown", _rx(
        r"user(?:name)? (?:is )?unknown", r"unknown (?:user|recipient|local[- ]part|address|mailbox|account)",
        r"no such (?:user|recipient|mailbox|account|address|person|local user)", r"user not found",
        r"(?:recipient|address|mailbox|user|account|addressee)(?: name| address)?(?: is)? (?:was )?not (?:found|recogni[sz]ed|known|listed|valid|exist)",
        r"(?:does not|doesn't|did not|dose not|not) exist", r"invalid (?:recipient|address|mailbox|user|account)",
        r"recipient (?:address )?rejected", r"mailbox (?:is )?unavailable", r"mailbox not available",
        r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox|address)", r"bad destination mailbox",
        r"no mailbox", r"unknown or illegal alias", r"unknown local", r"user doesn't have",
        r"(?:is|was) not a valid (?:e-?mail|mailbox|user|recipient)", r"address (?:is )?(?:invalid|unknown)",
        r"no (?:valid )?recipients?", r"not our customer", r"no account",
        r"can(?:no|')t find (?:the )?(?:recipient|user|mailbox)", r"couldn't be found", r"could not be found",
        r"user .{0,40}not (?:exist|found)", r"no such address", r"unknown address", r"addressee unknown",
        r"account does not", r"not listed in", r"invalid mailbox", r"recipient not found", r"mailbox not found",
        r"user_unknown", r"is not a known user", r"no longer valid", r"invalid .{0,20}userid",
        r"final (?:e-?mail )?delivery point", r"not a registered", r"no matches to nameserver", r"did not (?:exactly )?match",
        r"n'existe pas", r"existiert nicht", r"unbekannt", r"no existe", r"inesistente", r"non esiste",
        r"not recensed", r"non recens", r"not (?:a )?valid user", r"is (?:wrong|incorrect)",
    )),
    ("expired", _rx(
        r"retry (?:time(?:out)?|timeout) exceeded", r"(?:delivery|message) (?:time|period)? ?expired",
        r"could not be delivered (?:with)?in", r"has been delayed for", r"queue(?:d)? too long",
        r"expired after", r"gave up", r"giving up", r"maximum (?:time|retries)", r"message expired",
        r"too long in (?:the )?queue", r"timeout (?:while|waiting)", r"undeliverable for more than",
        r"could not be delivered for \d+", r"retry timeout", r"failed \d+ attempts", r"after \d+ attempt",
        r"not delivered within", r"queue period", r"over a period of", r"exceeded maximum delivery attempts",
        r"too many (?:delivery )?attempts",
    )),
    ("mailer_error", _rx(
        r"mail loop", r"routing loop", r"too many hops", r"loop(?:ing|s)? detected", r"message looping",
        r"\blooping\b", r"command died", r"mail ?(?:er|box)? ?program", r"unix-(?:syntax|mailer)",
    )),
    ("network_error", _rx(
        r"did not respond", r"not responding", r"connection to .{0,40}failed", r"could not find a gateway",
        r"name service error", r"establish an smtp connection",
        r"connection (?:refused|timed out|reset|closed|lost)", r"timed? ?out", r"network (?:is )?unreachable",
        r"temporary (?:dns|lookup) failure", r"could not connect", r"unable to connect", r"no route to host",
        r"lost connection", r"broken pipe", r"dns (?:error|failure)", r"mx lookup",
    )),
    ("system_error", _rx(
        r"system (?:error|failure|problem)", r"local error", r"processing error", r"error while being processed",
        r"server (?:unavailable|busy)", r"internal (?:server )?error", r"temporar(?:y|ily)",
        r"try again", r"resources? (?:temporarily )?unavailable", r"service (?:not available|unavailable)",
        r"server busy", r"configuration error", r"misconfigur",
    )),
    ("policy", _rx(
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)", r"not permitted to relay",
        r"\bpolicy\b", r"not authori[sz]ed", r"access denied", r"\brefused\b", r"not allowed",
        r"administrative prohibition", r"rejected by (?:the )?(?:recipient|administrator)", r"restricted",
        r"only accepts mail from",
    )),
]

_VACATION = _rx(
    r"out of (?:the )?office", r"\bvacation\b", r"auto(?:matic|mated)?[- ]?(?:reply|response|responder|antwort)",
    r"away from (?:my|the) (?:office|desk)", r"abwesenheit", r"absence", r"on leave", r"\bOOO\b",
)


def _status_of(*texts: str | None) -> str | None:
    for text in texts:
        match = _STATUS.search(text) if text else None
        if match:
            return ".".join(match.groups())
    return None


def _reply_of(text: str | None) -> int | None:
    if not text:
        return None
    match = _REPLY.match(text) or _REPLY_ANYWHERE.search(text[:400])
    return int(match.group(1)) if match else None


def text_reason(text: str | None) -> str | None:
    """The reason the diagnostic text names, or None when it names none."""
    found = text_match(text)
    return found[0] if found else None


def text_match(text: str | None) -> tuple[str, re.Match[str]] | None:
    """The reason the text names and where, by the first rule (in priority order) that
    matches anywhere in it."""
    if not text:
        return None
    sample = " ".join(text[:6000].split())
    for reason, pattern in _TEXT_RULES:
        match = pattern.search(sample)
        if match:
            return reason, match
    return None


def status_reason(status: str | None) -> str | None:
    if not status:
        return None
    _class, subject, detail = status.split(".")
    key = f"{int(subject)}.{int(detail)}"
    return _BY_STATUS.get(key)


_REFUSES_US = {"blocked", "rate_limited", "auth_failure", "spam_detected", "content_rejected", "virus_detected"}
_ADDRESS_GONE = {"user_unknown", "host_unknown", "has_moved", "not_accepted"}


def classify(
    *,
    status: str | None = None,
    code: int | None = None,
    diagnostic: str | None = None,
    action: str | None = None,
    reporter: str | None = None,
) -> Classification:
    """Classify one failure.

    `status`: the enhanced status code if the report gives one apart (a DSN's Status field);
    `code`: the SMTP reply code if known apart (a reply at send time); `diagnostic`: the
    text (a reply's message, a DSN's Diagnostic-Code, the explanation of a non-standard
    bounce); `action`: a DSN's Action; `reporter`: the system that reported it (see
    `core.bounces.reporter_of`), which decides where vendors give codes their own meaning.
    """
    text = diagnostic or ""
    status = status or _status_of(text)
    # A DSN's Status may be a bare 5.0.0 while the diagnostic has the real one.
    inner = _status_of(text)
    if status and inner and status.endswith(".0.0") and not inner.endswith(".0.0"):
        status = inner
    code = code or _reply_of(text)
    action = (action or "").strip().lower().split(" ")[0] or None
    if action in {"delivered", "relayed", "expanded"}:
        return Classification("not_a_bounce", "delivered", status, code)

    by_status = status_reason(status)
    by_text = text_reason(text)
    by_reporter = _reporter_reason(reporter, status, text)
    reason = _decide(by_reporter, by_status, status, by_text, code)

    kind = kind_of(reason)
    transient = (status or "").startswith("4") or (code is not None and 400 <= code < 500) or action == "delayed"
    permanent_evidence = (status or "").startswith("5") or (code is not None and code >= 500) or action == "failed"
    if kind == "hard" and (transient or not permanent_evidence):
        # The receiver says it may work later, or nobody said it is final: not enough to
        # give up on the address.
        kind = "soft"
    if action == "delayed" and kind not in {"block"}:
        kind = "soft"
    return Classification(kind, reason, status, code)


def _decide(by_reporter: str | None, by_status: str | None, status: str | None, by_text: str | None, code: int | None) -> str:
    if by_reporter:
        return by_reporter
    specific = by_status is not None and status is not None and ".".join(status.split(".")[1:]) not in _GENERIC
    if specific:
        assert by_status is not None
        # A specific code stands, except that a text saying the receiver refuses *us*
        # overrides an address verdict (a blocklisting sent as 5.1.1 by a sloppy filter
        # must not burn the address), and a text naming a cause refines a generic area.
        if by_status in _ADDRESS_GONE and by_text in _REFUSES_US:
            return by_text
        if by_status in _ADDRESS_GONE and status.startswith("4") and by_text:
            return by_text
        if by_status in _ADDRESS_GONE and by_text in _ADDRESS_GONE:
            # Microsoft sends "5.1.10 RESOLVER.ADR.RecipientNotFound" (RFC 7505's null MX
            # code) for an unknown recipient; the words say which.
            return by_text
        if by_text and kind_of(by_status) == "block" and kind_of(by_text) == "block":
            # Both say the receiver refuses us; the words say which way (Yahoo sends
            # policy rejections as 5.7.9, "authentication too weak" in RFC 4954).
            return by_text
        if by_status == "mailer_error" and by_text:
            return by_text
        return by_status
    if by_text:
        return by_text
    if by_status:
        return by_status
    if code is not None:
        return _BY_REPLY.get(code, "undefined")
    return "undefined"


_MICROSOFT = re.compile(r"outlook|hotmail|live\.com|msn\.com|office365|protection\.outlook|exchange", re.IGNORECASE)


def _reporter_reason(reporter: str | None, status: str | None, text: str) -> str | None:
    """Where a system's codes mean something of their own."""
    if not reporter:
        return None
    name = reporter.lower()
    if _MICROSOFT.search(name) and status and status.startswith("5.7.") and re.search(
        r"\[?\d{1,3}(?:\.\d{1,3}){3}\]?.*(?:block|list|reput)|S3150|banned", text, re.IGNORECASE
    ):
        return "blocked"
    if "yahoo" in name and re.search(r"\b(?:TS0\d|TSS0\d|PH0\d)\b", text):
        return "rate_limited"
    if "gmail" in name or "google" in name:
        if re.search(r"account .{0,40}(?:disabled|inactive)", text, re.IGNORECASE):
            return "suspended"
        if re.search(r"unsolicited mail|spam", text, re.IGNORECASE):
            return "spam_detected"
    return None


def is_vacation(subject: str | None, body: str | None) -> bool:
    return bool(_VACATION.search(subject or "")) or bool(_VACATION.search((body or "")[:1000]))
