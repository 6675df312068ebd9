"""Secrets redacted from every context and event text before it leaves the machine.

What counts as a secret is lsp_server/secret_rules.py's (detect-secrets' rules and EXTRA's). Lines
are cached, so a request pays only for the lines it has not seen before (private key blocks and
Kubernetes env entries, which span lines, are found in the whole text). `redact_context` redacts a
completion context as whole lines: a secret cut by the cursor, or by an edge of the context window,
is still found, and hidden on both sides of the cut.
"""

from __future__ import annotations

import re

from detect_secrets.plugins.private_key import PrivateKeyDetector

from lsp_server.secret_rules import ENV_ENTRY, MARK, RULES, Span

__all__ = ["MARK", "redact", "redact_context"]

# The detector's private key headers (and PuTTY's) open a block that runs to its end line; a
# block cut off by the end of the text hides everything after its header. Found by literal
# searches: a regex spanning the block costs a step per character of it.
_KEY_HEADER = re.compile("|".join(p.pattern for p in PrivateKeyDetector.denylist))
_PEM_END = re.compile(r"END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{0,5}")
_PUTTY_END = re.compile(r"Private-MAC: *[0-9a-fA-F]*")
# The text starts inside a block: base64 (and escaped newlines) up to an end line.
_KEY_TAIL = re.compile(r"\A[A-Za-z0-9+/=\s\\]*?-{4,5} ?END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-{4,5}")


def _key_spans(text: str) -> list[Span]:
    spans = []
    tail = _KEY_TAIL.match(text)
    if tail:
        spans.append(tail.span())
    at = 0
    while header := _KEY_HEADER.search(text, at):
        start = header.start()
        while start > 0 and text[start - 1] in "- ":
            start -= 1
        end = (_PUTTY_END if header.group(0).startswith("PuTTY") else _PEM_END).search(text, header.end())
        at = end.end() if end else len(text)
        spans.append((start, at))
    return spans


# A line cut by the context window is completed this far past the window's edge.
_REACH = 4_096

# Line → where its secrets are. Bounded: cleared when full, refilled by the next requests.
_CACHE_LINES = 8_192
_line_cache: dict[str, tuple[Span, ...]] = {}
# Trigger → the rules it runs, so a line costs one substring test per trigger.
_BY_TRIGGER = tuple(
    (trigger, frozenset(i for i, rule in enumerate(RULES) if trigger in rule.triggers))
    for trigger in sorted({t for rule in RULES for t in rule.triggers})
)


def redact(text: str) -> str:
    """`text` with every secret replaced by MARK; the text around it is kept as it was."""
    if not text:
        return text
    return _piece(text, _spans(text), 0, len(text), marked_before=False)


def redact_context(text: str, start: int, cursor: int, end: int) -> tuple[str, str]:
    """The prefix `text[start:cursor]` and suffix `text[cursor:end]`, redacted as parts of their
    whole lines. A secret cut by the cursor is hidden on both sides, its MARK in the prefix; one
    cut by an edge of the window is hidden up to that edge."""
    floor = max(0, start - _REACH)
    lo = max(text.rfind("\n", floor, start) + 1, floor)
    if lo > floor:  # and the line before: a Kubernetes env entry names its secret there
        lo = max(text.rfind("\n", floor, lo - 1) + 1, floor)
    hi = text.find("\n", end, end + _REACH)
    hi = min(len(text), end + _REACH) if hi < 0 else hi
    whole = text[lo:hi]
    spans = _spans(whole)
    if not spans:
        return text[start:cursor], text[cursor:end]
    start, cursor, end = start - lo, cursor - lo, end - lo
    prefix = _piece(whole, spans, start, cursor, marked_before=False)
    return prefix, _piece(whole, spans, cursor, end, marked_before=cursor > start)


def _spans(text: str) -> list[Span]:
    spans: list[Span] = []
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        spans.extend(_key_spans(text))
    if "value:" in text:
        spans.extend(m.span("secret") for m in ENV_ENTRY.finditer(text))
    if len(_line_cache) >= _CACHE_LINES:
        _line_cache.clear()
    get = _line_cache.get
    at = 0
    for line in text.split("\n"):
        found = get(line)
        if found is None:
            found = _line_cache[line] = _line_spans(line)
        if found:
            spans.extend((at + s, at + e) for s, e in found)
        at += len(line) + 1
    return _merged(spans)


def _line_spans(line: str) -> tuple[Span, ...]:
    lowered = line.lower()
    due: set[int] = set()
    for trigger, rules in _BY_TRIGGER:
        if trigger in lowered:
            due |= rules
    if not due:
        return ()  # most lines of code: no rule to run
    spans = []
    for i in sorted(due):
        rule = RULES[i]
        if rule.needs and not any(c in line for c in rule.needs):
            continue
        for match in rule.pattern.finditer(line):
            span = rule.pick(match)
            if span is not None and span[0] < span[1]:
                spans.append(span)
    return tuple(_merged(spans))


def _merged(spans: list[Span]) -> list[Span]:
    if len(spans) < 2:
        return spans
    spans.sort()
    out = [spans[0]]
    for s, e in spans[1:]:
        last_s, last_e = out[-1]
        if s <= last_e:
            out[-1] = (last_s, max(last_e, e))
        else:
            out.append((s, e))
    return out


def _piece(text: str, spans: list[Span], a: int, b: int, *, marked_before: bool) -> str:
    """text[a:b] with each span in it replaced by MARK; a span that began before `a` is marked
    here only if it was not marked in the piece before."""
    out = []
    at = a
    for s, e in spans:
        if e <= a or s >= b:
            continue
        if s > at:
            out.append(text[at:s])
        if s >= a or not marked_before:
            out.append(MARK)
        at = max(at, min(e, b))
    if at == a and not out:
        return text[a:b]
    out.append(text[at:b])
    return "".join(out)
