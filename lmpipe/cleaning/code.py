"""Which lines of a document are code, and whether the whole document is.

Real technical text mixes prose with code: docstrings and READMEs carry indented examples, `>>>`
sessions and fenced blocks; some documents are source files. Whitespace normalization keeps those
lines as they are (indentation is part of the code), and the prose quality rules, which expect
sentences, look only at the other lines; a document that is mostly code is judged by code rules
instead (see lmpipe.cleaning.filters).
"""

from __future__ import annotations

import re

# A line that only code has: a statement keyword at its start, an assignment, a call on its own,
# a lone closing bracket, a doctest prompt (_CODE_START, matched at the line's start), or a line
# ending in a bracket, brace, semicolon, continuation or "):" (_CODE_END).
_CODE_START = re.compile(
    r"""\s*(?:(?:def|class|return|import|from\s+[\w.]+\s+import|if|elif|else|for|while|try|except|finally
          |with|raise|yield|lambda|function|var|let|const|\#include|\#define|\#if|\#ifdef|\#endif|case|esac
          |then|fi|done|do|local|export|extern|typedef|struct|static|public|private|package|func|fn|use
          |async|await)\b
        | [A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*[-+*/%|&^]?=(?!=)\s*\S
        | [\w.]+\(.*\)\s*$
        | [)\]}]+[;,]?\s*$
        | (?:>>>|\.\.\.)(?:\s|$))""",
    re.X,
)
_CODE_END = ("{", "}", ";", "\\", "(", "[", "):")
_DOCTEST = re.compile(r"^\s*>>>(?:\s|$)")
_FENCE = re.compile(r"^\s*```")
_COMMENT = re.compile(r"^\s*(?:#|//|/\*|\*|--\s)")
# Fewer lines than this say nothing reliable about a whole document.
MIN_CODE_LINES = 5


def is_code_line(line: str) -> bool:
    return line.rstrip().endswith(_CODE_END) or _CODE_START.match(line) is not None


def code_share(lines: list[str]) -> float:
    """Share of the non-blank, non-comment lines that look like code (comments are neutral: a
    markdown heading and a shell comment look alike)."""
    judged = [line for line in lines if line.strip() and not _COMMENT.match(line)]
    return sum(map(is_code_line, judged)) / len(judged) if judged else 0.0


def is_code_document(lines: list[str], min_share: float) -> bool:
    nonblank = sum(1 for line in lines if line.strip())
    return nonblank >= MIN_CODE_LINES and code_share(lines) >= min_share


def _blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each run of non-blank lines."""
    spans, start = [], None
    for i, line in enumerate(lines):
        if line.strip():
            start = i if start is None else start
        elif start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(lines)))
    return spans


def _code_block(lines: list[str], after_literal: bool, min_share: float) -> bool:
    """A run of non-blank lines that is code: a doctest session, an indented block after a reST
    `::`, or an indented block whose lines mostly look like code (indentation alone is not enough:
    man pages indent all their prose)."""
    if any(_DOCTEST.match(line) for line in lines):
        return True
    indented = any(line[:1].isspace() for line in lines)
    return indented and (after_literal or code_share(lines) >= min_share)


def _fenced(lines: list[str]) -> list[bool]:
    """Lines of markdown code fences, the fences included; an unclosed fence fences nothing."""
    mask = [False] * len(lines)
    opened = None
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            if opened is None:
                opened = i
            else:
                mask[opened : i + 1] = [True] * (i + 1 - opened)
                opened = None
    return mask


def code_block_lines(lines: list[str], min_share: float) -> list[bool]:
    """For each line of a prose document, whether it is code: the lines of fenced blocks and of
    code blocks (see _code_block)."""
    if not any(line[:1].isspace() or line.lstrip().startswith((">>>", "```")) for line in lines):
        return [False] * len(lines)  # the common case, decided without regular expressions
    mask = _fenced(lines)
    previous = ""
    for start, end in _blocks(lines):
        literal = previous.rstrip().endswith("::")
        if not any(mask[start:end]) and _code_block(lines[start:end], literal, min_share):
            mask[start:end] = [True] * (end - start)
        previous = lines[end - 1]
    return mask


def code_lines(lines: list[str], min_share: float) -> list[bool]:
    """For each line, whether it is code: every line of a code document, else code_block_lines."""
    if is_code_document(lines, min_share):
        return [True] * len(lines)
    return code_block_lines(lines, min_share)
