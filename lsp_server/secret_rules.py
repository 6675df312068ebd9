"""What counts as a secret: the rules lsp_server/redact.py applies to every line it sends.

The rules are detect-secrets' (1.5.0), taken from the installed package: the `denylist` patterns of
its provider detectors, the quoted-value patterns of its keyword detector, its private key headers.
EXTRA adds, each row with its reason, what that scanner lacks: bare values in YAML, INI and .env
files, more keywords, connection strings, URL, header and Basic credentials, webhook URLs, newer
provider formats. Its entropy detectors are left out: they flag every hash and UUID in ordinary code.
A rule runs only on a line holding one of its trigger substrings.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

from detect_secrets.plugins import keyword as ds_keyword
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

MARK = "<redacted>"

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    triggers: tuple[str, ...]  # lowercase; the rule runs on a line that contains any of them
    pattern: re.Pattern[str]
    # Where the secret is in a match, or None when the match holds none (a name, a call).
    pick: Callable[[re.Match[str]], Span | None]
    # Characters of which the line must hold one as well (a quote, for quoted values).
    needs: str = ""


def _group(n: int) -> Callable[[re.Match[str]], Span | None]:
    return lambda m: m.span(n) if m.group(n) else None


# A shape match widened over the rest of its token (fixed-length patterns would leave a longer
# token's tail), without the delimiters some patterns match around it.
_TOKEN_TAIL = re.compile(r"[\w\-+/=.]*")


def _token(m: re.Match[str]) -> Span:
    start, end = m.span()
    text = m.string
    while start < end and text[start] in " \t=:\"'":
        start += 1
    while end > start and text[end - 1] in " \t\"'":
        end -= 1
    tail = _TOKEN_TAIL.match(text, end)
    return start, (tail.end() if tail else end)


def _after(literal: str) -> Callable[[re.Match[str]], Span]:
    return lambda m: (m.start() + m.group(0).index(literal) + len(literal), m.end())


# A value that starts like this is a reference or a template, not a secret: `$DB_PASSWORD`,
# `${...}`, `%(x)s`, `{{ vault }}`, `<redacted>`, a call or list, a YAML tag or anchor.
_REFERENCE_START = frozenset("$%{<[(!&*@`\\")


def _literal(name: str | int) -> Callable[[re.Match[str]], Span | None]:
    """The named group, unless it is a reference or template (`$PASS`, `{password}`, `%s`)."""

    def pick(m: re.Match[str]) -> Span | None:
        value = m.group(name)
        return m.span(name) if value and value[0] not in _REFERENCE_START else None

    return pick


# -- detect-secrets' rules -----------------------------------------------------------------------

# (detector, which of its denylist patterns, triggers, where the secret is in a match)
_PROVIDERS: tuple[tuple[type, int, tuple[str, ...], Callable[[re.Match[str]], Span | None]], ...] = (
    (ArtifactoryDetector, 0, ("akc",), _token),
    (ArtifactoryDetector, 1, ("ap",), _token),
    (AWSKeyDetector, 0, ("akia", "asia", "abia", "acca", "a3t"), _token),
    (AWSKeyDetector, 1, ("aws",), _group(1)),
    (AzureStorageKeyDetector, 0, ("accountkey=",), _after("AccountKey=")),
    (BasicAuthDetector, 0, ("://",), _literal(1)),
    (CloudantDetector, 0, ("cl",), _group(1)),
    (CloudantDetector, 1, ("cl",), _group(1)),
    (CloudantDetector, 2, ("cloudant.com",), _group(1)),
    (CloudantDetector, 3, ("cloudant.com",), _group(1)),
    (DiscordBotTokenDetector, 0, (".",), _token),
    (GitHubTokenDetector, 0, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _token),
    *((GitLabTokenDetector, i, ("gl", "gr1348941"), _token) for i in range(7)),
    (IbmCloudIamDetector, 0, ("key", "pwd", "pass", "token"), _group(1)),
    (IbmCosHmacDetector, 0, ("secret",), _group(1)),
    (JwtTokenDetector, 0, ("eyj",), _token),
    (MailchimpDetector, 0, ("-us",), _token),
    (NpmDetector, 0, ("_authtoken",), _group(1)),
    (OpenAIDetector, 0, ("t3blbkfj",), _token),
    (PypiTokenDetector, 0, ("pypi-ag",), _token),
    (PypiTokenDetector, 1, ("pypi-ag",), _token),
    (SendGridDetector, 0, ("sg.",), _token),
    (SlackDetector, 0, ("xox",), _token),
    (SlackDetector, 1, ("hooks.slack.com",), _token),
    (SoftlayerDetector, 0, ("sl", "softlayer"), _group(1)),
    (SoftlayerDetector, 1, ("softlayer",), _group(1)),
    (SquareOAuthDetector, 0, ("sq0csp-",), _token),
    (StripeDetector, 0, ("k_live_",), _token),
    (TelegramBotTokenDetector, 0, (":",), _token),
    (TwilioKeyDetector, 0, ("ac",), _token),
    (TwilioKeyDetector, 1, ("sk",), _token),
)

# Every keyword in the detector's list holds one of these.
_KEYWORD_TRIGGERS = ("key", "pass", "pwd", "secret", "contras")
# The detector's quotes-required set (what it applies to code: a quoted literal after a keyword),
# plus its C form (`char password[] = "..."`). Unquoted values are EXTRA's: the detector accepts
# them only in config files, and a context carries no file type.
_KEYWORD_PATTERNS = (
    *ds_keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP.items(),
    *ds_keyword.COMMON_C_DENYLIST_REGEX_TO_GROUP.items(),
)

SCANNER_RULES: tuple[Rule, ...] = (
    *(
        Rule(f"{detector.secret_type} ({index})", triggers, detector.denylist[index], pick)
        for detector, index, triggers, pick in _PROVIDERS
    ),
    *(
        Rule(f"secret keyword ({n})", _KEYWORD_TRIGGERS, pattern, _group(group), needs="\"'`")
        for n, (pattern, group) in enumerate(_KEYWORD_PATTERNS)
    ),
)


# -- EXTRA: what detect-secrets lacks, each with why --------------------------------------------

# Keywords beyond the detector's list (which has no `token`, `credentials`, `access_key`, `auth`,
# `passphrase` nor the dashed header spellings).
_MORE_KEYWORDS = (
    r"token(?![a-z])",
    r"credentials?(?![a-z])",
    r"passphrase",
    r"auth(?![a-z])",
    r"(?:access|api|app|application|auth|secret|signing|encryption|hmac|master|session|subscription)"
    r"[-_]?key(?![a-z])",
)
# These start a word, or a camelCase part (`authToken`), never the middle of one (`tiktoken`).
_WORD_START = r"(?-i:(?<![a-z])|(?<=[a-z0-9])(?=[A-Z]))"
_ALL_KEYWORDS = "|".join((*ds_keyword.DENYLIST, *(_WORD_START + k for k in _MORE_KEYWORDS)))

# A bare value that is code, not a secret: a call, subscript or template, a number.
_CODE_CHARS = frozenset("()[]{}")
_NUMBER = re.compile(r"[+-]?\d{1,6}(?:\.\d+)?")
_NAME = re.compile(r"[A-Za-z_]\w*")
_ATTRIBUTE_CHAIN = re.compile(r"[A-Za-z_]\w*(?:(?:\.|::|->)[A-Za-z_]\w*)+")
_NOT_SECRETS = frozenset(
    (
        *("none", "null", "nil", "true", "false", "yes", "no", "undefined", "required"),
        *("str", "string", "bytes", "int", "float", "bool", "number", "any", "object", "dict", "list"),
        *("optional", "secretstr", "secretbytes", "path"),
    )
)
_ABOUT_A_SECRET = re.compile(
    r"[_-](?:type|name|url|uri|endpoint|header|hdr|field|len|length|count|file|path|dir|env|var|prompt"
    r"|label|format|kind|mode|class|method|scheme|pattern|regex|ttl|expiry|expires|timeout|size"
    r"|version|id|index|limit)s?$",
    re.IGNORECASE,
)
_TRAILER = re.compile(r"[,;]?\s*(?:(?:#|//).*)?$")


def _value(m: re.Match[str]) -> Span | None:
    """The quoted or bare value after a secret-sounding name, if it is a literal."""
    op, q = m.group("op"), m.group("q")
    if op in ("==", "!=") or _ABOUT_A_SECRET.search(m.group("suffix")):
        # A comparison (`token == "lambda"`: a parser; the detector's own rules cover passwords),
        # or a name for something about the secret (`token_type`, `password_file`, `auth_url`).
        return None
    if q:
        start, end = m.span("quoted")
        value = m.group("quoted")
        if value[:1] in _REFERENCE_START or value.startswith(MARK) or not any(c.isalnum() for c in value):
            return None
        # The name inside a string (`input("Password: ")`, `"token=" + t`): that quote closes it.
        if (m.string.count(q, 0, m.start()) - (q in m.group("close"))) % 2:
            return None
        if m.group("end"):
            return start, end
        # No closing quote: being typed, or a string that goes on; all of the rest of the line.
        return start, len(m.string)
    value = m.group("bare")
    if (
        op == "="
        and not (m.group("sp1") or m.group("sp2") or m.group("close"))
        and _upper_name(m)
        and not (value.endswith(",") or "(" in value or ")" in value)  # `f(API_KEY=key, ...)`
    ):
        # .env, shell, Dockerfile: NAME=value is a literal, whatever follows (`PGPASSWORD=x psql`).
        return None if value[0] in "$%{<" else m.span("bare")
    if op == ":" and not m.group("close") and m.string[m.end() : m.end() + 1] in ('"', "'"):
        # `"X-API-Key: value"`: a header, or a config line, inside a string.
        return None if value[0] in _REFERENCE_START else m.span("bare")
    # Otherwise only the last thing on the line: `password = hunter2 if x else y` is code.
    if not _TRAILER.fullmatch(m.string, m.end()):
        return None
    while value and value[-1] in ",;":
        value = value[:-1]
    if (
        not value
        or value[0] in _REFERENCE_START
        or _CODE_CHARS.intersection(value)
        or value.lower() in _NOT_SECRETS
        or _NUMBER.fullmatch(value)
        or _ATTRIBUTE_CHAIN.fullmatch(value)
    ):
        return None
    if (
        _NAME.fullmatch(value)
        and not any(c.isdigit() for c in value)
        and (
            op != ":"  # `password = default_password`: a variable
            or m.group("close")  # `"password": password`: JSON has no bare words, so code
            or m.group("bare").endswith(",")  # `password: password,`: an object literal
            or not value.islower()  # `password: SecretStr`, `token: someName`: a type, a name
        )
    ):
        return None
    return m.start("bare"), m.start("bare") + len(value)


def _upper_name(m: re.Match[str]) -> bool:
    """The whole name before the match's `=` is upper case (`DB_PASSWORD`, not `db_password`)."""
    line, start = m.string, m.start()
    while start > 0 and (line[start - 1].isalnum() or line[start - 1] in "_-"):
        start -= 1
    name = line[start : m.start("sp1")]
    return name.upper() == name


def _basic(m: re.Match[str]) -> Span | None:
    """HTTP Basic credentials are base64 of `user:password`; prose ("basic authentication") is not."""
    value = m.group("secret")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:
        return None
    return m.span("secret") if b":" in decoded else None


_KEYWORD_VALUE = re.compile(
    rf"(?:{_ALL_KEYWORDS})(?P<suffix>[\w-]*)(?P<close>[\"'\]]{{0,2}})"
    # a type annotation: `DB_SECRET: str = "..."`
    r"(?:[ \t]*:[ \t]*[\w.\[\], |]{1,40}?(?=[ \t]*=[^=>]))?(?P<sp1>[ \t]*)(?P<op>:=|=>|==|!=|=|:)"
    r"(?P<sp2>[ \t]*)(?:[rbuRBU]{0,2}(?P<q>[\"'`])(?P<quoted>[^\"'`\n]*)(?P<end>(?P=q)?)"
    r"|(?P<bare>[^\s\"'`]+))",
    re.IGNORECASE,
)

# A URL's password; unlike detect-secrets', with no user name (`redis://:pw@host`) and with the
# characters people leave unescaped (`p@ss!`), up to the last `@` before the host.
_URL_PASSWORD = r"[a-z][a-z0-9+.\-]*://[^\s:@/'\"]*:(?P<secret>[^\s/'\"]+)@[^\s@/'\"]"

EXTRA: tuple[Rule, ...] = (
    # Secret-sounding names the detector does not list, bare values (YAML, INI, .env, shell:
    # the detector takes them only from files it knows to be config), and values still being typed
    # (no closing quote yet), all as long as the value is a literal rather than code.
    Rule(
        "secret keyword, any value",
        (*_KEYWORD_TRIGGERS, "token", "credential", "auth"),
        _KEYWORD_VALUE,
        _value,
    ),
    Rule("password in a URL", ("://",), re.compile(_URL_PASSWORD, re.IGNORECASE), _literal("secret")),
    # ADO.NET/ODBC connection strings, where the password sits between semicolons.
    Rule(
        "password in a connection string",
        ("pass", "pwd", "key"),
        # After a semicolon, or first in a string and followed by one (`"Password=...;Server=..."`).
        re.compile(
            r"(?:(?<=;)|(?<=[\"'])(?=[^\"'\n]*;))[ \t]*(?:password|pwd|accountkey|sharedaccesskey)[ \t]*="
            r"[ \t]*(?P<secret>[^;\"'\s$%{][^;\"'\n]*?)[ \t]*(?=[;\"']|$)",
            re.IGNORECASE,
        ),
        _group(1),
    ),
    # Command lines: `--password x`, `docker login -u ci -p x` (not `mkdir -p x`).
    Rule(
        "password flag",
        ("pass", "login"),
        re.compile(
            r"--[\w-]*pass(?:word|wd|phrase)?[ =][\"']?(?P<secret>[^\s\"']+)"
            r"|\blogin\b[^\n|;&]*?[ \t]-p[ \t]*[\"']?(?P<short>[^-\s\"'][^\s\"']*)"
        ),
        lambda m: _literal("secret")(m) if m.group("secret") else _literal("short")(m),
    ),
    # Query strings (JDBC URLs, signed URLs): the detector's keyword rules need a quote or spaces.
    Rule(
        "credential in a query string",
        ("pass", "pwd", "secret", "token", "key", "sig="),
        re.compile(
            r"[?&](?:password|passwd|pwd|secret|client_secret|token|access_token|api_?key|sig)="
            r"(?P<secret>[^&\s\"'#]+)",
            re.IGNORECASE,
        ),
        _literal("secret"),
    ),
    # HTTP authorization: no keyword the detector knows, and a scheme word sits before the value.
    Rule(
        "authorization header",
        ("authorization",),
        re.compile(
            r"authorization(?:[\"'\]]{1,2}[ \t]*[:=][ \t]*[rbu]?[\"']|:[ \t]*)(?:[A-Za-z-]+[ \t]+)?"
            r"(?P<secret>[A-Za-z0-9_\-.=+/~]{8,})",
            re.IGNORECASE,
        ),
        _group(1),
    ),
    Rule(
        "bearer token",
        ("bearer",),
        re.compile(r"\bbearer[ \t]+(?P<secret>[A-Za-z0-9_\-.=+/~]{16,})", re.IGNORECASE),
        _group(1),
    ),
    Rule(
        "basic credentials",
        ("basic",),
        re.compile(r"\bbasic[ \t]+(?P<secret>[A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])", re.IGNORECASE),
        _basic,
    ),
    # HTTP Basic credentials given as a pair: requests' auth tuples and classes, curl's -u.
    Rule(
        "basic auth pair",
        ("auth", "-u", "--user"),
        re.compile(
            r"(?:\bauth\s*=\s*\(|\b\w*(?:Basic|Digest)Auth\()\s*[rbu]?[\"'][^\"']*[\"']\s*,\s*[rbu]?[\"']"
            r"(?P<secret>[^\"']+)[\"']"
            r"|(?:^|\s)(?:-u|--user)[ =][\"']?[^\s:\"'$]+:(?P<curl>[^\s\"']+)",
        ),
        lambda m: _literal("secret")(m) if m.group("secret") else _literal("curl")(m),
    ),
    # Webhook URLs are credentials by themselves; the detector has only Slack's /services/ form.
    Rule(
        "webhook url",
        ("hooks.slack.com", "/api/webhooks/"),
        re.compile(
            r"https://(?:hooks\.slack\.com/(?:workflows|triggers)/[A-Za-z0-9_/]+"
            r"|(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w-]+)"
        ),
        _token,
    ),
    # Provider formats gitleaks knows and detect-secrets 1.5.0 does not (or only in one spelling:
    # its Stripe rule has live keys of exactly 24 characters, its OpenAI rule only legacy keys,
    # its npm rule only .npmrc lines, its Slack rule only tokens with numeric parts).
    *(
        Rule(name, triggers, re.compile(pattern), _token)
        for name, triggers, pattern in (
            (
                "stripe key or webhook secret",
                ("k_live_", "k_test_", "whsec_"),
                r"\b(?:[sr]k_(?:live|test)_[0-9a-zA-Z]{16,}|whsec_[A-Za-z0-9+/=]{24,})",
            ),
            ("github fine-grained token", ("github_pat_",), r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
            ("openai or anthropic key", ("sk-",), r"\bsk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
            ("hugging face token", ("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),
            ("google api key", ("aiza",), r"\bAIza[0-9A-Za-z_\-]{35}"),
            ("google oauth client secret", ("gocspx-",), r"\bGOCSPX-[A-Za-z0-9_\-]{24,}"),
            ("npm token", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}"),
            ("slack token", ("xox", "xapp-"), r"\bx(?:ox[abposre]|app)-[A-Za-z0-9-]{10,}"),
            ("digitalocean token", ("_v1_",), r"\bdo[por]_v1_[a-f0-9]{64}"),
            ("shopify token", ("shp",), r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
            ("databricks token", ("dapi",), r"\bdapi[a-f0-9]{32}(?:-\d)?"),
            ("postman key", ("pmak-",), r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}"),
            ("age secret key", ("age-secret-key-",), r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}"),
            ("azure ad client secret", ("q~",), r"(?<![\w~.])[a-zA-Z0-9_~.]{3}\dQ~[a-zA-Z0-9_~.\-]{31,34}"),
            ("sentry auth token", ("sntrys_", "sntryu_"), r"\bsntry[su]_[A-Za-z0-9_=+/]{32,}"),
        )
    ),
)

# EXTRA's one rule across lines, run on a whole text: Kubernetes env lists name the secret on
# one line and give it on the next (the detector sees one line at a time).
ENV_ENTRY = re.compile(
    rf"name:[ \t]*[\"']?[\w.-]*(?i:{_ALL_KEYWORDS})[\w.-]*[\"']?[ \t]*\r?\n"
    r"[ \t]*value:[ \t]*(?P<q>[\"']?)(?P<secret>[^\s\"'#$][^\"'\n]*?)(?P=q)[ \t]*(?:#.*)?$",
    re.MULTILINE,
)

RULES: tuple[Rule, ...] = (*SCANNER_RULES, *EXTRA)
