"""Noise of known kinds, injected into the corpus at configured rates, so the clean stage can be
scored against ground truth: every document records the kinds it carries.

Kinds that edit a document in place (pii, control, mojibake, html) can stack on one document; the
others (exact and near duplicates, short fragments, gibberish, spam) add documents.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lmpipe.params import NoiseRates
from lmpipe.shifts import encode
from lmpipe.world.vocabulary import BRANDS, PEOPLE

NOISE_KINDS = ("exact_dup", "near_dup", "html", "mojibake", "control", "short", "gibberish", "spam", "pii")
# Kinds that edit a document in place, in the order applied: HTML wraps last, as a scraper sees it.
IN_PLACE = ("pii", "control", "mojibake", "html")

_CONTROL_CHARS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
# Hosts that look real but are not reserved for documentation: the scrubber rightly leaves
# example.com-style addresses alone, and injected PII must be PII it should remove.
_EMAIL_HOSTS = ("mailbox.org", "postvale.net", "inbox-mail.com", "letterbird.io")
_SPAM_LINES = (
    "Buy cheap {item} now at {site} !!!", "CLICK HERE to win a free {item} >>> {site}",
    "Limited offer: {item} for only {price} dollars, order today at {site}",
    "Best {item} deals online, visit {site} now", "Earn money from home and get cheap {item} at {site}",
)
_SPAM_ITEMS = ("watches", "sunglasses", "pills", "sneakers", "phones", "loans", "followers")


def _pii(text: str, rng: random.Random) -> str:
    first = rng.choice(PEOPLE)[0]
    first_ascii = first.encode("ascii", "ignore").decode().lower() or "info"
    email = f"{first_ascii}.{rng.choice(('smith', 'berg', 'moreau', 'rossi', 'kowal'))}{rng.randint(1, 99)}@" \
            f"{rng.choice(_EMAIL_HOSTS)}"
    phone = rng.choice(("555-01{a:02d}-{b:04d}", "(555) 01{a:02d}-{b:04d}", "+1 555 01{a:02d} {b:04d}")).format(
        a=rng.randint(0, 99), b=rng.randint(0, 9999))
    sentence = rng.choice((f"You can reach me at {email}.", f"Call {phone} for details.",
                           f"Contact {first} at {email} or {phone}."))
    return f"{text} {sentence}"


def _control(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(_CONTROL_CHARS))
    return "".join(chars)


def _mojibake(text: str, rng: random.Random) -> str:
    """UTF-8 bytes read as Windows-1252, the commonest mojibake; ftfy undoes it. The world's
    non-ASCII characters avoid the five bytes cp1252 leaves undefined."""
    return text.encode("utf-8").decode("cp1252")


def _html(text: str, rng: random.Random) -> str:
    site = f"{rng.choice(BRANDS).lower()}{rng.randint(1, 999)}.example"
    title = " ".join(text.split()[:5])
    body = "</p>\n<p>".join(text.split("\n"))
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title} | {site}</title>'
        f"<script>window.dataLayer = window.dataLayer || [];</script></head>\n"
        f'<body><nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>\n'
        f'<div class="cookie-banner">We use cookies to improve your experience.</div>\n'
        f'<div class="content"><p>{body}</p></div>\n'
        f'<footer>© {rng.randint(2009, 2024)} {site}. All rights reserved. <a href="/privacy">Privacy</a></footer>'
        f"</body></html>"
    )


_NOISERS = {"pii": _pii, "control": _control, "mojibake": _mojibake, "html": _html}


def _near_duplicate(text: str, rng: random.Random) -> str:
    """The text with about 4% of its words edited (a typo, a dropped or a doubled word)."""
    words = text.split(" ")
    for i in sorted(rng.sample(range(len(words)), max(1, round(0.04 * len(words)))), reverse=True):
        op = rng.randrange(3)
        if op == 0 and sum(c.isalpha() for c in words[i]) >= 4:
            words[i] = encode("typos", words[i], rng)
        elif op == 1 and len(words) > 20:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


def _gibberish(rng: random.Random) -> str:
    if rng.random() < 0.5:  # keyboard mash: letter strings without the shape of words
        return " ".join("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(2, 12)))
                        for _ in range(rng.randint(20, 60)))
    return " ".join("".join(rng.choice("#$%&*@~^|<>{}[]0123456789abcdef") for _ in range(rng.randint(3, 10)))
                    for _ in range(rng.randint(15, 40)))


def _spam(rng: random.Random) -> str:
    line = rng.choice(_SPAM_LINES).format(item=rng.choice(_SPAM_ITEMS), price=rng.randint(5, 99),
                                          site=f"www.deals{rng.randint(1, 9999)}.example")
    return "\n".join([line] * rng.randint(8, 25))


def wanted(rates: NoiseRates, docs: int) -> dict[str, int]:
    """Documents per noise kind for a corpus of `docs` base documents."""
    return {kind: round(getattr(rates, kind) * docs) for kind in NOISE_KINDS}


def inject_in_place(originals: list[str], want: dict[str, int],
                    rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """The documents with in-place noise applied, and each document's list of kinds."""
    texts = list(originals)
    kinds: list[list[str]] = [[] for _ in texts]
    for kind in IN_PLACE:
        pool = [i for i, t in enumerate(texts) if not t.isascii()] if kind == "mojibake" else range(len(texts))
        if want[kind] > len(pool):
            raise ValueError(f"noise.{kind} asks for {want[kind]} documents but only {len(pool)} qualify")
        for i in rng.sample(pool, want[kind]):
            texts[i] = _NOISERS[kind](texts[i], rng)
            kinds[i].append(kind)
    return texts, kinds


Record = tuple[str, str, list[str]]  # text, domain, noise kinds


def added_documents(originals: list[str], domains: list[str], kinds: list[list[str]], want: dict[str, int],
                    seen: set[str], rng: random.Random, domain_names: list[str]) -> list[Record]:
    """The documents noise adds. Duplicates copy originals that in-place noise left clean; every
    added document except an exact duplicate is redrawn until it is new to `seen` (updated here)."""
    records: list[Record] = []

    def add(kind: str, make: Callable[[], tuple[str, str]]) -> None:
        text, domain = make()
        while text in seen:
            text, domain = make()
        seen.add(text)
        records.append((text, domain, [kind]))

    clean = [i for i, k in enumerate(kinds) if not k]
    if (want["exact_dup"] or want["near_dup"]) and not clean:
        raise ValueError("duplicates need clean originals, but in-place noise touched every document")
    for i in rng.choices(clean, k=want["exact_dup"]):
        records.append((originals[i], domains[i], ["exact_dup"]))
    for i in rng.choices(clean, k=want["near_dup"]):
        add("near_dup", lambda i=i: (_near_duplicate(originals[i], rng), domains[i]))

    def fragment() -> tuple[str, str]:
        i = rng.randrange(len(originals))
        return " ".join(originals[i].split()[:rng.randint(3, 8)]), domains[i]

    for _ in range(want["short"]):
        add("short", fragment)
    for _ in range(want["gibberish"]):
        add("gibberish", lambda: (_gibberish(rng), rng.choice(domain_names)))
    for _ in range(want["spam"]):
        add("spam", lambda: (_spam(rng), rng.choice(domain_names)))
    return records
