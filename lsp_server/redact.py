"""Secrets redacted from every context and event text before it leaves the machine.

A table of well-known credential shapes (provider tokens, private key blocks, passwords and
secrets in assignments), each with cheap trigger substrings: a rule's regex runs only on text that
contains one of them. Every rule but the private key block works within a line, and lines are
cached, so a request pays only for the lines it has not seen before. No library on PyPI does this fast enough
to run on every completion request (detect-secrets scans through a plugin stack).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK = "<redacted>"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    triggers: tuple[str, ...]  # lowercase; the rule runs when any occurs in the lowercased text
    pattern: re.Pattern[str]
    # The group holding the secret; 0 is the whole match.
    group: int | str = 0


def _rule(name: str, triggers: tuple[str, ...], pattern: str, group: int | str = 0, flags: int = 0) -> Rule:
    return Rule(name, triggers, re.compile(pattern, flags), group)


_KEYWORDS = (
    r"(?:password|passwd|passphrase|pwd|secret|token|api_?key|apikey|access_?key|private_?key"
    r"|credentials?|client_?secret)"
)
_ENV_NAME = (
    r"[A-Z0-9_]*(?:PASSWORD|PASSWD|PWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?)[A-Z0-9_]*"
)

RULES: tuple[Rule, ...] = (
    # A block cut off by the context window still hides everything after its header.
    _rule(
        "private key block",
        ("private key",),
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----[\s\S]*?"
        r"(?:-----END[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\Z)",
    ),
    _rule("aws access key id", ("akia", "asia"), r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    _rule(
        "github token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
    ),
    _rule("gitlab token", ("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    _rule("slack token", ("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    _rule("stripe key", ("_live_", "_test_"), r"\b[srp]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    _rule("google api key", ("aiza",), r"\bAIza[0-9A-Za-z_\-]{35}"),
    _rule("openai or anthropic key", ("sk-",), r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}"),
    _rule("hugging face token", ("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),
    _rule("npm token", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),
    _rule("json web token", ("eyj",), r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    _rule("bearer token", ("bearer",), r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9_\-.=+/]{16,})", "secret"),
    _rule("password in a url", ("://",), r"://[^/\s:@'\"]+:(?P<secret>[^/\s@'\"]+)@", "secret"),
    # name = "value", name: str = 'value', "name": "value", name := "value", name => 'value'
    _rule(
        "secret in an assignment",
        ("pass", "pwd", "secret", "token", "key", "credential"),
        rf"(?i){_KEYWORDS}\w*[\"']?(?:\s*:\s*[\w.\[\]|, ]{{1,40}}?)?\s*(?:=|:=|:|=>)\s*"
        r"(?:[rbuf]{0,2})(?P<q>[\"'])(?P<secret>[^\"'\n]+)(?P=q)",
        "secret",
    ),
    # .env files and shell (no spaces around =, unlike formatted code): PASSWORD=hunter2
    _rule(
        "secret in an environment assignment",
        ("pass", "pwd", "secret", "token", "key", "credential"),
        rf"^[ \t]*(?:export[ \t]+)?{_ENV_NAME}=(?P<secret>[^\s\"'#$(\[{{][^\s\"'#]*)",
        "secret",
    ),
)


# Line → redacted line. Bounded: cleared when full, refilled by the next requests.
_CACHE_LINES = 8_192
_line_cache: dict[str, str] = {}
_LINE_TRIGGERS = tuple(sorted({t for rule in RULES[1:] for t in rule.triggers}))


def redact(text: str) -> str:
    """`text` with every secret replaced by MARK; the text around it is kept as it was."""
    if not text:
        return text
    block = RULES[0]
    if block.triggers[0] in text.lower():
        text = block.pattern.sub(MARK, text)
    if len(_line_cache) >= _CACHE_LINES:
        _line_cache.clear()
    get = _line_cache.get
    return "\n".join([get(line) or _remember(line) for line in text.split("\n")])


def _remember(line: str) -> str:
    done = _line_cache[line] = _redact_line(line)
    return done


def _redact_line(line: str) -> str:
    lowered = line.lower()
    for trigger in _LINE_TRIGGERS:
        if trigger in lowered:
            break
    else:
        return line  # most lines of code: no rule to run
    for rule in RULES[1:]:
        if any(trigger in lowered for trigger in rule.triggers):
            line = rule.pattern.sub(lambda m, g=rule.group: _mask(m, g), line)
    return line


def _mask(match: re.Match[str], group: int | str) -> str:
    whole = match.group(0)
    if group == 0:
        return MARK
    start, end = match.span(group)
    if whole[start - match.start() : end - match.start()] == MARK:
        return whole
    return whole[: start - match.start()] + MARK + whole[end - match.start() :]
