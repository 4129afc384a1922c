"""PII scrubbing: emails, IP addresses and phone numbers replaced by <EMAIL>, <IP>, <PHONE>."""

from __future__ import annotations

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
# Phone candidates: optional +country code, optional (area), then 2-4 digit groups joined by one
# separator. _is_phone then asks for enough digits, so years and prices stay.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-]|\.\d)"
)
_DIGIT = re.compile(r"\d")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _DATE.fullmatch(candidate):
        return False
    marked = candidate.startswith("+") or "(" in candidate
    return digits >= 10 or marked or re.fullmatch(r"\d{3}[ .-]\d{4}", candidate) is not None


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """`text` with PII replaced by placeholders, and the replacements made per PII_KINDS."""
    counts = dict.fromkeys(PII_KINDS, 0)

    def sub(kind: str, placeholder: str):
        def replace(m: re.Match) -> str:
            if kind == "phone" and not _is_phone(m.group()):
                return m.group()
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
