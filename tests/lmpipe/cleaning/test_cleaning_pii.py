"""lmpipe.cleaning.pii: real emails, IPs and phone numbers are scrubbed; what only looks like them
in technical text (dates, times, versions, standard and clause numbers, coordinates, table rows,
identifiers) and addresses reserved for documentation are left alone."""

from __future__ import annotations

import pytest

from lmpipe.cleaning.ground_truth import still_shows
from lmpipe.cleaning.pii import is_documentation_email, is_documentation_ip, scrub_pii

NONE = {"email": 0, "phone": 0, "ip": 0}


@pytest.mark.parametrize("text, kind", [
    ("Write to ana.smith42@mailbox.org today.", "email"),
    ("Mail first+tag@post.uni-example.de now.", "email"),
    ("Ask jd@example.com.au, not a reserved domain.", "email"),
    ("Call 555-0123-4567 for details.", "phone"),
    ("Call (555) 0142-9876 for details.", "phone"),
    ("Call +1 555 0199 1234 for details.", "phone"),
    ("Phone 415.555.2671 or later.", "phone"),
    ("Call 415 555 2671 after six.", "phone"),
    ("Ring +44 20 7946 0958 now.", "phone"),
    ("Dial 555-1234 after six.", "phone"),
    ("Tel. no.: 555-1234.", "phone"),
    ("The server at 192.168.10.254 is down.", "ip"),
    ("Mirror at 146.82.138.7 answers.", "ip"),
    ("Use fe80::1ff:fe23:4567:890a locally.", "ip"),
])
def test_pii_is_replaced_and_counted(text, kind):
    scrubbed, counts = scrub_pii(text)
    assert counts[kind] == 1 and sum(counts.values()) == 1, (scrubbed, counts)
    assert f"<{kind.upper()}>" in scrubbed
    assert not still_shows("pii", scrubbed)


@pytest.mark.parametrize("text", [
    "In 1999 the town had 10 000 people and 2 bridges.",
    "It cost $1,250,000 on 2023-01-15, or 12/05/2021 by the old calendar.",
    "Version 3.11.4 ships with 128 GB and runs at 2.5 GHz.",
    "The score was 3-2 after 90 minutes; see page 12-14.",
    "Meet at 10:30 near gate 7.",
    # timestamps
    "Example: 2006-08-14 02:34:56-06:00 is a valid date.",
    "seconds since the Epoch (1970-01-01 00:00 UTC)",
    "Logged at 2023.10.05 12:01:33 by cron.",
    # standard, specification and clause numbers
    "Floating point follows IEEE 854-1987 and IEEE Std 754-2008.",
    "Dates are ISO 8601:2004; C is ISO/IEC 9899:1999; see RFC 2616.",
    "Rights as defined in Clause 252.227-7013 (c) (1) of DFARS.",
    "Per section 552.212-4 of the regulation.",
    # versions and identifiers
    "Upgrade bash to 5.2.15-2 (closes: #1024598).",
    "The build id is v1.555-1234 and ticket #555-1234 tracks it.",
    "Set timeout=555-1234 in the file.",
    # coordinates and rows of numbers
    "BB\t+1306-05937\tAmerica/Barbados",
    "kill 123 543 2341 3453",
    "2 3 4 5 6 7       30 40 50 60 70 80 90 100 110 120",
])
def test_numbers_that_only_look_like_phones_are_left_alone(text):
    assert scrub_pii(text) == (text, NONE)


@pytest.mark.parametrize("text", [
    "Send the report to ana@example.com or bob@example.org.",
    "Relay through mx@mail.example.net and ops@host.example.",
    "Fixtures use qa@ci.test, nobody@nowhere.invalid and root@box.localhost.",
    "Documentation hosts 192.0.2.15, 198.51.100.7 and 203.0.113.99.",
    "IPv6 examples: 2001:db8::1 and 2001:db8:85a3::8a2e:370:7334.",
    "Loopback 127.0.0.1, unspecified 0.0.0.0, broadcast 255.255.255.255, multicast 224.0.0.251.",
    "All-nodes multicast is ff02::1.",
])
def test_documentation_addresses_are_left_alone(text):
    assert scrub_pii(text) == (text, NONE)
    assert not still_shows("pii", text)  # and the ground truth does not count them as PII


def test_real_and_documentation_addresses_in_one_text():
    text = "Write ana@example.com or ana.real@mailbox.org; test box 192.0.2.1, prod box 93.184.216.34."
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == "Write ana@example.com or <EMAIL>; test box 192.0.2.1, prod box <IP>."
    assert counts == {"email": 1, "phone": 0, "ip": 1}


@pytest.mark.parametrize("address, documentation", [
    ("a@example.com", True), ("a@EXAMPLE.ORG", True), ("a@sub.example.net", True), ("a@x.test", True),
    ("a@x.example", True), ("a@example.com.au", False), ("a@myexample.com", False), ("a@mailbox.org", False),
])
def test_documentation_domains(address, documentation):
    assert is_documentation_email(address) is documentation


@pytest.mark.parametrize("ip, documentation", [
    ("192.0.2.255", True), ("198.51.100.0", True), ("203.0.113.5", True), ("2001:db8:ffff::1", True),
    ("127.8.8.8", True), ("10.0.0.1", False), ("192.0.3.1", False), ("2001:db9::1", False), ("not an ip", False),
])
def test_documentation_ips(ip, documentation):
    assert is_documentation_ip(ip) is documentation
