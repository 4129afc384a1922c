"""PII scrubbing: emails, IP addresses and phone numbers replaced by <EMAIL>, <IP>, <PHONE>.

Technical text is full of numbers that look like phone numbers to a loose pattern (timestamps,
standard numbers such as "IEEE 854-1987", clause numbers, coordinates, table rows) and of
addresses reserved for documentation, which identify nobody: example domains (RFC 2606, RFC
6761) and example, loopback and multicast IP addresses (RFC 5737, RFC 3849). Those are left
alone; every other match is replaced.
"""

from __future__ import annotations

import ipaddress
import re

PII_KINDS = ["email", "phone", "ip"]

# Replaced in this order: emails, IPs, phones (so that "10.0.0.12" is not read as a phone).
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]\w)")
IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"  # full form
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?<!:)(?![\w:])"  # a::b form
)
# Phone candidates: optional +country code, optional (area), then 2-5 digit groups joined by a
# separator, not glued to a word, an identifier (#123-4567, v1.555-1234), a time (12:30) or a
# path. _is_phone then checks the candidate's shape.
_PHONE = re.compile(
    r"(?<![\w+#/:=.$@-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}"
    r"(?![\w-]|[.:/]\d)"
)
_DIGIT = re.compile(r"\d")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_GROUPS = re.compile(r"\d+|[ .-]")
# A standard, specification or clause number, not a phone: "IEEE 854-1987", "ISO/IEC 9899 1999",
# "RFC 2616", "DFARS 252.227-7013".
_STANDARD_BEFORE = re.compile(
    r"\b(?:IEEE|ISO|IEC|ANSI|ECMA|RFC|ITU-T|ITU|ETSI|DIN|EN|BS|JIS|NIST|FIPS|ASTM|POSIX|Std|[Cc]lause|"
    r"[Ss]ection|DFARS?|FAR|CFR|[Aa]rticle)[\s/.:-]*(?:\w+[\s/-]+)?$"
)

_DOC_DOMAINS = ("example.com", "example.net", "example.org")
_DOC_TLDS = ("test", "example", "invalid", "localhost")
_DOC_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # RFC 5737
    "2001:db8::/32",  # RFC 3849
))


def is_documentation_email(address: str) -> bool:
    """An address at a domain reserved for examples: example.com/.net/.org and their subdomains,
    or the .test, .example, .invalid and .localhost top-level domains."""
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return domain.rsplit(".", 1)[-1] in _DOC_TLDS or any(
        domain == d or domain.endswith("." + d) for d in _DOC_DOMAINS)


def is_documentation_ip(text: str) -> bool:
    """An address that identifies no host: documentation ranges, loopback, unspecified,
    broadcast and multicast."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return (any(ip in net for net in _DOC_NETWORKS if net.version == ip.version) or ip.is_loopback
            or ip.is_unspecified or ip.is_multicast or text == "255.255.255.255")


def _is_phone(candidate: str, before: str) -> bool:
    """Whether a _PHONE candidate is a phone number, given the text just before it."""
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _DATE.match(candidate) or IPV4.fullmatch(candidate) or _STANDARD_BEFORE.search(before):
        return False
    marked = candidate.startswith("+") or "(" in candidate
    body = re.sub(r"^\+\d{1,3}[ .-]?|^\+|\(\d{1,4}\)[ .-]?", "", candidate)
    parts = _GROUPS.findall(body)
    groups, separators = parts[::2], set(parts[1::2])
    if len(separators) > 1:  # "252.227-7013": one number uses one separator
        return False
    if candidate.startswith("+") and re.match(r"\+\d{4}", candidate):  # "+1306-05937": ISO 6709
        return False
    if not marked and separators == {" "}:  # numbers in prose and tables: only the usual shapes
        return [len(g) for g in groups] in ([3, 3, 4], [3, 4])
    return digits >= 10 or marked or re.fullmatch(r"\d{3}[ .-]\d{4}", candidate) is not None


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """`text` with PII replaced by placeholders, and the replacements made per PII_KINDS."""
    counts = dict.fromkeys(PII_KINDS, 0)

    def sub(kind: str, placeholder: str):
        def replace(m: re.Match) -> str:
            found = m.group()
            if (kind == "email" and is_documentation_email(found) or kind == "ip" and is_documentation_ip(found)
                    or kind == "phone" and not _is_phone(found, m.string[max(0, m.start() - 24) : m.start()])):
                return found
            counts[kind] += 1
            return placeholder

        return replace

    # cheap guards first: most documents hold no "@", no ":" and no digit, and the patterns are
    # tried at every position of those that do
    if "@" in text:
        text = EMAIL.sub(sub("email", "<EMAIL>"), text)
    if _DIGIT.search(text):
        text = IPV4.sub(sub("ip", "<IP>"), text)
        if ":" in text:
            text = IPV6.sub(sub("ip", "<IP>"), text)
        text = _PHONE.sub(sub("phone", "<PHONE>"), text)
    return text, counts
