"""Secrets never leave the machine: each well-known shape is redacted and the code around it kept;
a secret cut by the cursor or by the context window is hidden on both sides; and over the real path
(a Session asking a backend on loopback over HTTP) none of the corpus's planted secrets crosses the
wire, in any completion context or event text, while ordinary code crosses it unchanged."""

from __future__ import annotations

import getpass
import inspect
import json
import netrc
import secrets
import shlex
import smtplib
import tokenize
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from loopback_http import Answer, LoopbackHTTP, json_answer

from lsp_server.context import MAX_PREFIX_CHARS, MAX_SUFFIX_CHARS
from lsp_server.options import Options
from lsp_server.redact import MARK, redact, redact_context
from lsp_server.session import Session

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
    # What the security issue found missing.
    (
        "unquoted aws secret",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "aws_secret_access_key = <redacted>\n",
    ),
    (
        "yaml password",
        "db:\n  password: Tr0ub4dor3x\n  port: 5432\n",
        "db:\n  password: <redacted>\n  port: 5432\n",
    ),
    ("env DB_PASS", "DB_PASS=Tr0ub4dor3x\n", "DB_PASS=<redacted>\n"),
    ("plain word in .env", "SESSION_SECRET=correcthorse\n", "SESSION_SECRET=<redacted>\n"),
    (
        "os.environ item",
        'os.environ["DB_PASSWORD"] = "Tr0ub4dor3"',
        'os.environ["DB_PASSWORD"] = "<redacted>"',
    ),
    ("api key header", '{"X-API-Key": "a1b2c3d4e5f6a7b8"}', '{"X-API-Key": "<redacted>"}'),
    (
        "api key header in a string",
        'curl -H "X-API-Key: a1b2c3d4e5f6" x',
        'curl -H "X-API-Key: <redacted>" x',
    ),
    ("redis url without a user", "redis://:Sup3rS3cret@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
    (
        "connection string",
        '"Server=db;User Id=sa;Password=Tr0ub4dor&3;Encrypt=true"',
        '"Server=db;User Id=sa;Password=<redacted>;Encrypt=true"',
    ),
    (
        "basic auth header",
        '{"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}',
        '{"Authorization": "Basic <redacted>"}',
    ),
    ("curl -u", "curl -u admin:Tr0ub4dor3 https://ci", "curl -u admin:<redacted> https://ci"),
    (
        "requests auth tuple",
        'get(url, auth=("admin", "Tr0ub4dor3"))',
        'get(url, auth=("admin", "<redacted>"))',
    ),
    (
        "slack webhook",
        'HOOK = "https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D4E/abcdefghijklmnopqrstuvwx"',
        'HOOK = "<redacted>"',
    ),
    ("stripe webhook secret", "whsec_5f2b8c1d9e3a7f6b4c0d8e2a1f9b3c7d", "<redacted>"),
    ("github fine-grained token", "t = github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "t = <redacted>"),
    (
        "kubernetes env entry",
        "- name: DB_PASSWORD\n  value: Tr0ub4dor3",
        "- name: DB_PASSWORD\n  value: <redacted>",
    ),
    ("password being typed", 'password = "Tr0ub4', 'password = "<redacted>'),
    ("docker login", "docker login -u ci -p Tr0ub4dor3 reg", "docker login -u ci -p <redacted> reg"),
    ("variable before a command", "PGPASSWORD=Tr0ub4dor3 psql -h db", "PGPASSWORD=<redacted> psql -h db"),
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
        "password_field = forms.CharField(widget=forms.PasswordInput)\n",
        "token_count = len(tokens) + 1\n",
        "if token == 'lambda':\n    token_type = 'keyword'\n",
        'secret = input("Password: ")\n',
        "password: str\ntoken: Optional[str] = None\n",
        "user = User(password=password, token=token)\n",
        "{ password: hashedPassword, token: req.body.token }\n",
        "DB_PASSWORD=${DB_PASSWORD:-}\nexport API_TOKEN=$(cat /run/secrets/api)\n",
        "assert digest == '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881'\n",
        "run_id = '3f2b8c1d-9e3a-4f6b-8c0d-8e2a1f9b3c7d'\n",
        "commit_sha = 'c0ffee9a1b2c3d4e5f60718293a4b5c6d7e8f901'\n",
        "url = f'{scheme}://{user}:{password}@{host}/{db}'\n",
        "mkdir -p build/out\n",
    ],
)
def test_ordinary_code_is_left_alone(code: str) -> None:
    assert redact(code) == code


# Real source that talks about tokens, passwords and secrets all through.
STDLIB = [tokenize, getpass, netrc, smtplib, secrets, shlex]


@pytest.mark.parametrize("module", STDLIB, ids=[m.__name__ for m in STDLIB])
def test_standard_library_source_is_left_alone(module: Any) -> None:
    source = inspect.getsource(module)
    assert source.count("\n") > 70
    assert redact(source) == source


LINES = [
    'password = "Tr0ub4dor&3x"',
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    f"token: {GH}",
    "DATABASE_URL=postgres://app:Sup3rS3cret99@db:5432/app",
]


@pytest.mark.parametrize("line", LINES)
def test_a_secret_cut_by_the_cursor_is_hidden_on_both_sides(line: str) -> None:
    text = f"import os\n\n{line}\nprint(1)\n"
    whole = redact(text)
    secret_at = whole.index(MARK)
    secret_end = secret_at + len(text) - len(whole) + len(MARK)
    for cursor in range(len(text) + 1):
        prefix, suffix = redact_context(text, 0, cursor, len(text))
        # The same text as if nothing had been cut, its one MARK on the prefix's side of a cut.
        assert prefix + suffix == whole
        if secret_at < cursor < secret_end:
            assert prefix.endswith(MARK)


@pytest.mark.parametrize("line", LINES)
def test_a_secret_cut_by_an_edge_of_the_window_is_hidden_up_to_that_edge(line: str) -> None:
    text = f"import os\n\n{line}\nprint(1)\n"
    whole = redact(text)
    secret_at = whole.index(MARK)
    secret_end = secret_at + len(text) - len(whole) + len(MARK)
    for cut in range(secret_at + 4, secret_end - 3):
        # The window starts inside the secret: the piece after the cut is not sent.
        prefix, suffix = redact_context(text, cut, cut + 5, len(text))
        assert prefix.startswith(MARK) and text[cut : cut + 4] not in prefix + suffix
        # It ends inside the secret: the piece before the cut is not sent.
        prefix, suffix = redact_context(text, 0, secret_at, cut)
        assert suffix.endswith(MARK) and text[cut - 4 : cut] not in prefix + suffix


def test_a_private_key_cut_by_the_start_of_the_window_is_hidden() -> None:
    body = "\n".join("MIIEowIBAAKCAQEA" + f"{i:02d}" * 23 for i in range(20))
    text = f"KEY = '''-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----'''\nx = 1\n"
    cut = text.index("\n", text.index("10" * 23)) + 1  # on a line of the key's body
    prefix, suffix = redact_context(text, cut, len(text) - 2, len(text))
    assert (prefix, suffix) == (f"{MARK}'''\nx = ", "1\n")


# -- the corpus: realistic files with planted secrets ------------------------------------------

CORPUS = Path(__file__).parent / "secrets_corpus"
PLANTED: list[dict[str, Any]] = json.loads((CORPUS / "planted.json").read_text())
FILES = sorted({p["file"] for p in PLANTED})


def pieces(planted: dict[str, Any]) -> list[str]:
    """Pieces of a planted secret whose presence anywhere means it leaked: 10 characters of its
    random part at every 5th (every 16th in a long key) position, and the last 10."""
    random_part = planted["secret"][planted["fixed_prefix"] :]
    if len(random_part) <= 10:
        return [random_part]
    stride = 5 if len(random_part) < 200 else 16
    return [random_part[i : i + 10] for i in range(0, len(random_part) - 9, stride)] + [random_part[-10:]]


def leaks(texts: list[str], planted: list[dict[str, Any]]) -> list[str]:
    """Each planted secret of which some piece is in one of the texts."""
    return sorted(
        {f"{p['file']}: {p['kind']}" for p in planted for piece in pieces(p) for t in texts if piece in t}
    )


def test_the_corpus_plants_over_a_hundred_secrets_of_over_twenty_kinds() -> None:
    assert len(PLANTED) >= 100
    assert len({p["kind"] for p in PLANTED}) >= 20
    for p in PLANTED:
        assert p["secret"] in (CORPUS / p["file"]).read_text(), p["kind"]


def test_every_planted_secret_is_redacted_from_its_file() -> None:
    redacted = [redact((CORPUS / name).read_text()) for name in FILES]
    assert leaks(redacted, PLANTED) == []


class Recorder:
    """A backend on loopback that keeps every request body it receives, as bytes."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.suggestion = "pass"
        self.http = LoopbackHTTP(self.answer, keep_alive=True)
        self.url = self.http.url

    def answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if method == "GET":  # /v1/model: the languages served
            info = {"base_model": "tiny", "live_version": "v-test", "fim": "flywheel", "temperature": 0.7}
            return json_answer(json.dumps(info).encode())
        self.bodies.append((path, body))
        if path.endswith("/complete"):
            answer = {
                "completion_id": uuid.uuid4().hex,
                "text": self.suggestion,
                "model_version": "v-test",
                "token_logprobs": [-0.5],
                "latency_ms": 1.0,
            }
        else:
            answer = {"stored": len(json.loads(body)["events"]), "duplicates": 0, "refused": []}
        return json_answer(json.dumps(answer).encode())

    def sent(self, since: int = 0, path: str = "") -> list[dict[str, Any]]:
        return [json.loads(body) for p, body in self.bodies[since:] if p.endswith(path)]


def strings(value: Any) -> Iterator[str]:
    """Every string in a decoded JSON body: what crossed the wire, escapes undone."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.http.close()


@pytest.fixture
async def session(recorder: Recorder, tmp_path: Path) -> AsyncIterator[Session]:
    options = Options(
        backend_url=recorder.url,
        state_dir=tmp_path / "state",
        debounce_ms=0,
        request_timeout_s=30.0,  # a loaded machine is slow, not a leak
        flush_interval_s=0.05,
        survival_delays_s=(600.0,),
        rewrite_window_s=600.0,
        # Redaction is what is measured here: every language is asked about, whatever is served.
        languages={"*": True},
    )
    s = Session(options, root_path=str(tmp_path / "ws"))
    s.start_background()
    yield s
    await s.shutdown(flush_timeout_s=1.0)


def sent_uri(tmp_path: Path, name: str) -> str:
    """A URI the server sends from: a file the corpus names like one never sent (staging.env) is
    opened under a name of its own, as redaction is what these tests measure."""
    return (tmp_path / "ws" / f"{name}.txt").as_uri()


# Real code around each file, long enough that the context window can start or end anywhere in it.
PAD = inspect.getsource(tokenize) + "\n"
assert len(PAD) > MAX_PREFIX_CHARS + MAX_SUFFIX_CHARS


def position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset)
    return line, offset - (text.rfind("\n", 0, offset) + 1)


async def test_no_planted_secret_leaves_in_a_completion_context(
    session: Session, recorder: Recorder, tmp_path: Path
) -> None:
    """The cursor inside each secret, then the window's start, then its end: nothing of it is sent."""
    for name in FILES:
        text = PAD + (CORPUS / name).read_text() + PAD
        uri = sent_uri(tmp_path, name)
        session.open(uri, text, "plaintext", 1)
        planted = [p for p in PLANTED if p["file"] == name]
        for p in planted:
            at = text.index(p["secret"])
            cut = at + len(p["secret"]) // 2
            for cursor in (cut, cut + MAX_PREFIX_CHARS, cut - MAX_SUFFIX_CHARS):
                since = len(recorder.bodies)
                assert await session.complete(uri, *position(text, cursor), invoked=True) is not None
                [request] = recorder.sent(since, "/complete")
                context = request["context"]
                assert leaks(list(strings(request)), planted) == [], (name, p["kind"], cursor - cut)
                # Nothing of it next to the cut either, however short the pieces on either side.
                head, tail = text[at:cut], text[cut : at + len(p["secret"])]
                if cursor == cut:
                    assert not context["prefix"].endswith(head[-4:]) and not context["suffix"].startswith(
                        tail[:4]
                    )
                elif cursor > cut:
                    assert context["prefix"].startswith(MARK) and not context["prefix"].startswith(tail[:4])
                else:
                    assert context["suffix"].endswith(MARK) and not context["suffix"].endswith(head[-4:])
        session.close(uri)


async def test_no_planted_secret_leaves_in_an_event_text(
    session: Session, recorder: Recorder, tmp_path: Path
) -> None:
    """Each secret's lines (and the line before) written over an accepted suggestion (survival
    texts) and where a rejected one was (rewrite texts)."""
    version = 0
    for n, p in enumerate(PLANTED):
        text = (CORPUS / p["file"]).read_text()
        at = text.index(p["secret"])
        start = text.rfind("\n", 0, text.rfind("\n", 0, at)) + 1
        end = text.find("\n", at + len(p["secret"]))
        region = text[start:end]
        placeholder = text[start:at] + "x" + text[at + len(p["secret"]) : end]
        document = text[:start] + text[end:]
        line, character = position(document, start)
        recorder.suggestion = placeholder

        # Accepted, then the placeholder replaced by the secret: the survival text holds it.
        uri = sent_uri(tmp_path, f"{n}-kept-{p['file']}")
        session.open(uri, document, "plaintext", version := version + 1)
        served = await session.complete(uri, line, character, invoked=True)
        assert served is not None
        session.change(uri, [((line, character, line, character), placeholder)], version := version + 1)
        session.accept(served.completion_id)
        x_line, x_character = position(document[:start] + placeholder, at)
        edit = (x_line, x_character, x_line, x_character + 1)
        session.change(uri, [(edit, p["secret"])], version := version + 1)
        assert session.documents[uri].text == text
        session.close(uri)

        # Rejected, then the user's own text written at its spot: the rewrite text holds it.
        uri = sent_uri(tmp_path, f"{n}-rewritten-{p['file']}")
        session.open(uri, document, "plaintext", version := version + 1)
        served = await session.complete(uri, line, character, invoked=True)
        assert served is not None
        session.reject(served.completion_id)
        session.change(uri, [((line, character, line, character), region)], version := version + 1)
        session.close(uri)

    assert await session.flush(30.0) == 0
    # By id: a batch that timed out on a loaded machine is sent again.
    events = {e["event_id"]: e for body in recorder.sent(path="/events") for e in body["events"]}.values()
    texts = {
        kind: [e["text"] for e in events if e["kind"] == kind and e.get("text")]
        for kind in ("survival", "rewrite")
    }
    assert len(texts["survival"]) == len(texts["rewrite"]) == len(PLANTED)
    assert sum(MARK in t for t in texts["survival"] + texts["rewrite"]) == 2 * len(PLANTED)
    assert leaks([s for body in recorder.sent() for s in strings(body)], PLANTED) == []


async def test_ordinary_code_crosses_the_wire_unchanged(
    session: Session, recorder: Recorder, tmp_path: Path
) -> None:
    uri = (tmp_path / "ws" / "tokenize.py").as_uri()
    session.open(uri, PAD, "python", 1)
    for offset in range(0, len(PAD), 997):
        assert await session.complete(uri, *position(PAD, offset), invoked=True) is not None
        context = recorder.sent(path="/complete")[-1]["context"]
        assert context["prefix"] == PAD[max(0, offset - MAX_PREFIX_CHARS) : offset]
        assert context["suffix"] == PAD[offset : offset + MAX_SUFFIX_CHARS]
