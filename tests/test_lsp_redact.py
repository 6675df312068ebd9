"""Secrets never leave the machine: each well-known shape is redacted, the code around it kept."""

from __future__ import annotations

import pytest

from lsp_server.redact import MARK, redact

GH = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
CASES = [
    ("aws key id", "key_id = AKIAIOSFODNN7EXAMPLE\n", "key_id = <redacted>\n"),
    ("github token", f"GH = '{GH}'", "GH = '<redacted>'"),
    ("gitlab token", "t = glpat-abcdefghij0123456789", "t = <redacted>"),
    ("slack token", "hook('xoxb-1234567890-abcdefghij')", "hook('<redacted>')"),
    ("stripe key", "stripe.api_key = sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe.api_key = <redacted>"),
    ("google api key", "k = AIzaSyA-1234567890abcdefghijklmnopqrstu", "k = <redacted>"),
    ("openai key", "client = OpenAI(api_key=sk-proj-abcdefghijklmnopqrstuvwx)", None),
    ("hugging face token", "login(hf_abcdefghijklmnopqrstuvwxyz0123456)", "login(<redacted>)"),
    ("jwt", "jwt = eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4", "jwt = <redacted>"),
    ("bearer", 'headers = {"Authorization": "Bearer abcdef0123456789abcd"}', None),
    (
        "url password",
        'DSN = "postgres://app:hunter22@db:5432/x"',
        'DSN = "postgres://app:<redacted>@db:5432/x"',
    ),
    ("python assignment", 'password = "correct horse"\n', 'password = "<redacted>"\n'),
    ("typed assignment", "DB_SECRET: str = 's3cr3t'", "DB_SECRET: str = '<redacted>'"),
    ("dict entry", '{"client_secret": "abc123", "n": "x"}', '{"client_secret": "<redacted>", "n": "x"}'),
    ("keyword argument", 'connect(user="bob", passwd="pa55")', 'connect(user="bob", passwd="<redacted>")'),
    ("env file", "export API_KEY=abc123def\nDEBUG=1\n", "export API_KEY=<redacted>\nDEBUG=1\n"),
    (
        "private key block",
        "k = '''-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----'''\nx = 1\n",
        "k = '''<redacted>'''\nx = 1\n",
    ),
    ("private key cut off by the context window", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl", "<redacted>"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_secrets_are_redacted(text: str, expected: str | None) -> None:
    got = redact(text)
    if expected is None:
        assert MARK in got and "abcdefghijklmnop" not in got and "0123456789abcd" not in got
    else:
        assert got == expected


@pytest.mark.parametrize(
    "code",
    [
        "token = tokenizer.encode(text)\n",
        "password = getpass.getpass()\n",
        "SECRET_KEY = os.environ['SECRET_KEY']\n",
        'def check(password: str) -> bool:\n    return password == ""\n',
        "api_key = settings.api_key\n",
        "keys = {k: v for k, v in items}\n",
        "print('tokens:', n_tokens)\n",
    ],
)
def test_ordinary_code_is_left_alone(code: str) -> None:
    assert redact(code) == code
