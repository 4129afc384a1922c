"""lmpipe.cleaning.repairs: each repair on crafted positives and negatives (PII: test_cleaning_pii.py,
whitespace around code: test_cleaning_code.py)."""

from __future__ import annotations

from cleaning_samples import PROSE

from lmpipe.cleaning.ground_truth import still_shows
from lmpipe.cleaning.repairs import repair
from lmpipe.params import CleanParams

P = CleanParams(num_proc=1)


def test_mojibake_is_repaired_and_ascii_left_alone():
    broken = "Café Chloé serves crème brûlée.".encode().decode("cp1252")
    text, repairs, _ = repair(broken, P)
    assert text == "Café Chloé serves crème brûlée."
    assert repairs == ["unicode"]
    assert repair(PROSE[0], P) == (PROSE[0], [], {"email": 0, "phone": 0, "ip": 0})


def test_html_becomes_main_text_without_chrome():
    page = (
        '<!DOCTYPE html><html><head><title>Kettle | shop</title><script>var x = "<p>";</script></head>'
        '<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>'
        '<div class="cookie-banner">We use cookies.</div>'
        "<div class='content'><p>Fish &amp; chips</p>\n<p>were <b>good</b>.</p></div>"
        "<footer>&copy; 2024 shop</footer></body></html>"
    )
    text, repairs, _ = repair(page, P)
    assert text == "Fish & chips\n\nwere good."
    assert "html" in repairs and not still_shows("html", text)
    assert repair("Fish &amp; chips &#8212; &quot;fresh&quot;", P)[0] == 'Fish & chips \u2014 "fresh"'

    # prose with angle brackets and our own placeholders is not HTML
    assert repair("If a < b and c > d then <EMAIL> stays.", P.model_copy(update={"pii": False}))[1] == []


def test_control_characters_and_whitespace():
    text, repairs, _ = repair("Hel\x00lo\u200b wor\x1bld\r\n\r\n\r\n  next\tline  ", P)
    assert text == "Hello world\n\nnext line"
    assert repairs == ["control", "whitespace"]
    assert not still_shows("control", text)


def test_normalization_and_switches():
    wide = "ｆｕｌｌｗｉｄｔｈ"
    assert repair(wide, P)[0] == wide  # NFC keeps legitimate width forms
    assert repair(wide, P.model_copy(update={"normalization": "NFKC"}))[0] == "fullwidth"
    off = P.model_copy(update={"fix_unicode": False, "strip_html": False, "remove_control": False,
                               "normalize_whitespace": False, "pii": False})
    raw = "<p>a\x00  b</p> me@example.com"
    assert repair(raw, off) == (raw, [], {"email": 0, "phone": 0, "ip": 0})
