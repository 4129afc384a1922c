"""Real technical text: hard-wrapped prose passes the line-based rules, code keeps its indentation
through whitespace normalization, and a document that is mostly code is judged by code rules
(lmpipe.cleaning.code, .filters, .repairs)."""

from __future__ import annotations

import textwrap

import pytest
from cleaning_samples import PROSE, corpus_of

from lmpipe.cleaning.code import code_lines, is_code_document
from lmpipe.cleaning.filters import first_failure, logical_lines, quality_signals
from lmpipe.cleaning.repairs import normalize_whitespace, repair
from lmpipe.cleaning.streaming import clean_corpus
from lmpipe.params import CleanParams, WorldParams
from lmpipe.world import generate_world

P = CleanParams(num_proc=1)

# Hard-wrapped at 70 columns, as reference documentation and docstrings are: only the last line
# of each paragraph ends in punctuation.
WRAPPED = "\n\n".join(textwrap.fill(text, 70) for text in PROSE)

MAN_PAGE = """\
DESCRIPTION
       The  chage  command changes the number of days between password
       changes and the date of the last password change. This information
       is used by the system to determine when a user must change their
       password.

       -d, --lastday LAST_DAY
           Set the number of days since January 1st, 1970 when the password
           was last changed. The date may also be expressed in the format
           YYYY-MM-DD (or the format more commonly used in your area).

       -l, --list
           Show account aging information.

       -W, --warndays WARN_DAYS
           Set the number of days of warning before a password change is
           required. The WARN_DAYS option is the number of days prior to
           the password expiring that a user will be warned their password
           is about to expire.
"""

DOCSTRING = '''\
Helper class to quickly write a loop over all standard input files.

Typical use is:

    import fileinput
    for line in fileinput.input(encoding="utf-8"):
        process(line)

This iterates over the lines of all files listed in the arguments,
defaulting to the standard input if the list is empty. If a filename
is a dash, it is also replaced by the standard input. To specify an
alternative list of filenames, pass it as the first argument.

Before any lines have been read, the module reports no file name and
no line number. The example below shows the interactive use of the
module from the Python prompt, with the output that it prints, and a
function that reads the first line of several files:

>>> import fileinput
>>> for line in fileinput.input(["a.txt"]):
...     print(line,   end="")
...
first  line

```python
def first_lines(paths):
    return [next(iter(open(p))) for p in paths]
```
'''

SOURCE = '''\
"""Bisection algorithms."""


def insort_right(a, x, lo=0, hi=None):
    """Insert item x in list a, and keep it sorted assuming a is sorted."""
    lo = bisect_right(a, x, lo, hi)
    a.insert(lo, x)


def bisect_right(a, x, lo=0, hi=None):
    """Return the index where to insert item x in list a, assuming a is sorted."""
    if lo < 0:
        raise ValueError("lo must be non-negative")
    if hi is None:
        hi = len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo
'''


def test_hard_wrapped_prose_passes_every_filter():
    lines = [line for line in WRAPPED.split("\n") if line.strip()]
    raw_share = sum(line.endswith(".") for line in lines) / len(lines)
    assert raw_share < 0.3  # per physical line, C4's rule would drop this prose
    s = quality_signals(WRAPPED)
    assert s["punct_line_share"] == 1.0
    assert first_failure(s, P) == ("", "")
    logical = logical_lines(WRAPPED)
    assert all(line.endswith(".") for line in logical) and " ".join(logical).split() == WRAPPED.split()


def test_a_man_page_passes_and_its_prose_is_collapsed():
    text, repairs, _ = repair(MAN_PAGE, P)
    assert first_failure(quality_signals(text), P) == ("", "")
    assert "repairs" and "whitespace" in repairs
    assert "The chage command changes the number" in text  # doubled spaces and indentation go
    assert not any(line.startswith(" ") for line in text.split("\n"))  # prose, not code


def test_lists_without_punctuation_still_fail():
    menu = "\n".join(["Home", "Products and services", "About us", "Contact the team", "Privacy policy",
                      "Terms of use for the site", "Careers", "Press and media kit", "Sitemap"])
    assert quality_signals(menu)["punct_line_share"] == 0.0
    assert first_failure(quality_signals(menu), P)[0] == "punct_lines"


def test_code_blocks_keep_their_indentation():
    text = normalize_whitespace(DOCSTRING.replace("Typical use", "Typical   use"))
    assert "Typical use is:" in text  # prose: runs of spaces collapse
    for line in ("    import fileinput", "        process(line)", ">>> for line in fileinput.input([\"a.txt\"]):",
                 '...     print(line,   end="")', "first  line", "    return [next(iter(open(p))) for p in paths]"):
        assert line in text.split("\n"), line
    assert first_failure(quality_signals(text), P) == ("", "")


def test_code_lines_are_told_apart():
    lines = DOCSTRING.split("\n")
    mask = code_lines(lines, 0.5)
    code = {line for line, c in zip(lines, mask) if c}
    assert "    for line in fileinput.input(encoding=\"utf-8\"):" in code
    assert ">>> import fileinput" in code and "```python" in code and "first  line" in code
    assert "Typical use is:" not in code and not any(c for line, c in zip(lines, mask) if line.startswith("This"))
    man = MAN_PAGE.split("\n")
    assert not any(code_lines(man, 0.5))  # uniformly indented prose is not code
    assert not is_code_document(DOCSTRING.split("\n"), 0.5) and is_code_document(SOURCE.split("\n"), 0.5)


def test_a_source_file_is_kept_whole_under_keep_code():
    text, _, _ = repair(SOURCE, P)
    assert text == SOURCE.strip("\n")  # not a space of indentation, not a blank line lost
    s = quality_signals(text)
    assert s["code"] == 1.0
    assert first_failure(s, P) == ("", "")
    # the prose rules do not apply to it, unless clean.keep_code is off
    strict = P.model_copy(update={"min_stopword_share": 0.5, "min_punct_line_share": 0.9})
    assert first_failure(s, strict) == ("", "")
    assert first_failure(s, strict.model_copy(update={"keep_code": False}))[0] == "punct_lines"


@pytest.mark.parametrize("line, failed", [
    ("x = [" + ", ".join(str(i) for i in range(400)) + "]", "max_line_chars"),  # generated data
    ("x = {{{{[[[[(((())))]]]]}}}}  # {{{{[[[[(((())))]]]]}}}} {{{{[[[[(((())))]]]]}}}} ", "alnum_share"),
])
def test_code_rules_drop_generated_or_data_like_code(line, failed):
    text = "\n".join(["import os", "def f(a):", "    return a", "y = 2", line, line, "z = 3"])
    s = quality_signals(text)
    assert s["code"] == 1.0
    name, detail = first_failure(s, P)
    assert name == "code" and detail.startswith(failed)
    assert first_failure(s, P.model_copy(update={"keep_code": False}))[0] not in ("code", "")


def test_minified_code_is_dropped():
    minified = "!function(e,t){" + ";".join(f"var a{i}=e.f{i}(t,{i})" for i in range(300)) + "}(window);"
    assert first_failure(quality_signals(minified), P)[0] != ""


def test_separator_lines_and_similar_paragraphs_are_not_duplicates():
    notice = ("This program is free software; you can redistribute it and/or modify\n"
              "it under the terms of the GNU {} Public License as published by\n"
              "the Free Software Foundation; either version 2 of the License, or\n"
              "(at your option) any later version.")
    text = "\n .\n".join([notice.format("General"), PROSE[1], notice.format("Lesser General"), PROSE[2]])
    s = quality_signals(text)
    assert s["dup_line_share"] == 0.0  # " ." separators and shared wrapped lines do not repeat content
    assert first_failure(s, P) == ("", "")
    spam = "\n".join(["Buy cheap watches now at www.deals42.example !!!"] * 10)
    assert first_failure(quality_signals(spam), P)[0] == "dup_lines"


def test_clean_corpus_keeps_wrapped_prose_and_code_intact():
    docs = corpus_of([WRAPPED, MAN_PAGE, DOCSTRING, SOURCE])
    result = clean_corpus(docs, P, seed=0)
    assert result.decisions["dropped_by"].tolist() == ["", "", "", ""]
    kept = {row.id: row.text for row in result.decisions.itertuples()}
    assert kept["d0003"] == SOURCE.strip("\n")
    assert "        process(line)" in kept["d0002"]


def test_no_world_document_is_taken_for_code():
    corpus = generate_world(WorldParams(docs=1500), seed=2).corpus
    for text in corpus["text"]:
        lines = repair(text, P)[0].split("\n")
        assert not any(code_lines(lines, P.min_code_line_share)), text[:200]
