"""The door: closed by default, Host and Origin checked, dashboard sessions with CSRF tokens, the
person a request is from decided by its token, telemetry off keeps nothing, bad numbers refused."""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import RunningBackend, backend_env, bearer, free_port, start_backend, stop_backend

from backend.auth import Authenticator, NoTokens, ensure_tokens, hash_token, person_of
from backend.store import Store
from core.config import Settings
from core.local_tokens import ADMIN, CLIENT, read_token, token_path


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    running = start_backend(tiny_model_dir, tmp_path_factory.mktemp("door") / "state")
    yield running
    stop_backend(running)


def complete(server: RunningBackend, headers: dict[str, str], **fields: object) -> httpx.Response:
    body = {"context": {"prefix": "def add(a, b):\n    return "}, **fields}
    return httpx.post(f"{server.url}/v1/complete", json=body, headers=headers, timeout=60)


def make_token(server: RunningBackend, name: str, role: str = CLIENT) -> dict[str, str]:
    made = httpx.post(
        f"{server.url}/v1/admin/tokens", json={"name": name, "role": role}, headers=server.admin
    )
    assert made.status_code == 200, made.text
    return made.json()


def test_first_start_makes_local_tokens_readable_by_the_user_alone(server: RunningBackend) -> None:
    for role in (ADMIN, CLIENT):
        path = token_path(server.data_dir, role)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, role
        assert read_token(server.data_dir, role).startswith("fw_")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Only their hashes are stored.
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("flywheel.sqlite3*"))
    assert read_token(server.data_dir, ADMIN).encode() not in raw


def test_without_a_token_only_health_and_login_answer(server: RunningBackend) -> None:
    url = server.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/admin/login").status_code == 200
    assert httpx.get(f"{url}/admin", follow_redirects=False).headers["location"] == "/admin/login"
    for method, path in [
        ("GET", "/v1/episodes?cursor=0&limit=5"),
        ("GET", "/v1/model"),
        ("GET", "/v1/checkpoints"),
        ("GET", "/admin/data.json"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/complete"),
        ("POST", "/v1/events"),
        ("POST", "/admin/act/pin/base"),
        ("POST", "/v1/admin/tokens"),
    ]:
        answer = httpx.request(method, f"{url}{path}", json={})
        assert answer.status_code == 401, (method, path, answer.text)
    # A wrong token is no better than none.
    assert httpx.get(f"{url}/v1/model", headers=bearer("fw_not-a-token")).status_code == 401


def test_client_tokens_cannot_do_what_admins_do(server: RunningBackend) -> None:
    for method, path in [
        ("GET", "/v1/episodes"),
        ("POST", "/admin/act/pin/base"),
        ("POST", "/v1/admin/tokens"),
        ("GET", "/metrics"),
    ]:
        answer = httpx.request(method, f"{server.url}{path}", json={}, headers=server.client)
        assert answer.status_code == 403, (method, path)
    assert httpx.get(f"{server.url}/v1/model", headers=server.client).status_code == 200


def test_a_page_on_another_site_cannot_act(server: RunningBackend) -> None:
    """Seen on a default `make up`: a cross-origin POST pinned the live version."""
    url = server.url
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "http://evil.example", **server.admin},
        {"origin": "null", **server.admin},
        {"sec-fetch-site": "cross-site", **server.admin},
    ):
        answer = httpx.post(f"{url}/admin/act/pin/base", headers=headers, follow_redirects=False)
        assert answer.status_code == 403, headers
    assert httpx.get(f"{url}/admin/data.json", headers=server.admin).json()["pinned"] is None
    # The same request from the backend's own origin (with the admin's token) goes through.
    own = {"origin": url, **server.admin}
    assert httpx.post(f"{url}/v1/admin/checkpoints/base/unpin", headers=own).status_code == 200


def test_dns_rebinding_cannot_read(server: RunningBackend) -> None:
    """Seen on a default `make up`: a request for another host name read the episodes."""
    port = urlsplit(server.url).port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        answer = httpx.get(
            f"{server.url}/v1/episodes?cursor=0&limit=5", headers={"host": host, **server.admin}
        )
        assert answer.status_code == 400, host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        answer = httpx.get(f"{server.url}/v1/episodes", headers={"host": host, **server.admin})
        assert answer.status_code == 200, host


def test_dashboard_cookie_is_a_session_and_its_forms_carry_a_csrf_token(server: RunningBackend) -> None:
    admin_token = read_token(server.data_dir, ADMIN)
    with httpx.Client(base_url=server.url, follow_redirects=False) as browser:
        assert browser.post("/admin/login", data={"token": "fw_wrong"}).status_code == 401
        login = browser.post("/admin/login", data={"token": admin_token})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert admin_token not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never return
        page = browser.get("/admin").text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert len(csrf) >= 32
        # The session's cookie alone cannot act: a forged form lacks the CSRF token.
        assert browser.post("/admin/act/pin/base").status_code == 403
        assert browser.post("/admin/act/pin/base", data={"csrf": "x" * 43}).status_code == 403
        assert browser.post("/admin/act/pin/base", data={"csrf": csrf}).status_code == 303
        assert browser.get("/admin/data.json").json()["pinned"] == "base"
        assert browser.post("/admin/act/unpin/-", data={"csrf": csrf}).status_code == 303
        # The cookie opens the dashboard, never the API.
        assert browser.get("/v1/episodes").status_code == 401
        browser.post("/admin/logout", data={"csrf": "forged"})
        assert browser.get("/admin/data.json").status_code == 200
        browser.post("/admin/logout", data={"csrf": csrf})
        assert browser.get("/admin/data.json").status_code == 401
    # Behind a TLS proxy (it says so in X-Forwarded-Proto; uvicorn trusts loopback proxies).
    secure = httpx.post(
        f"{server.url}/admin/login",
        data={"token": admin_token},
        headers={"x-forwarded-proto": "https"},
        follow_redirects=False,
    )
    assert "Secure" in secure.headers["set-cookie"]


def test_unauthenticated_bodies_are_refused_before_they_are_read(server: RunningBackend) -> None:
    """A 512 MiB upload announced by a stranger: refused at once, nothing spooled."""
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/checkpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Content-Length: {512 * 1024 * 1024}\r\n\r\n".encode()
            + b"--x\r\n" * 100
        )
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 3


def test_what_anyone_may_send_is_small(server: RunningBackend) -> None:
    """The login form is public: its body is capped far below the API's."""
    answer = httpx.post(f"{server.url}/admin/login", data={"token": "x" * 100_000})
    assert answer.status_code == 413


def test_the_person_is_the_tokens_not_the_clients_word(server: RunningBackend) -> None:
    """One client under many ids is one person; two tokens are two."""
    alice, bob = make_token(server, "alice"), make_token(server, "bob")
    assert alice["person"] != bob["person"]
    assert alice["person"] == person_of(hash_token(alice["token"]))
    served = []
    for index in range(4):
        answer = complete(server, bearer(alice["token"]), user_id=f"sockpuppet-{index}")
        served.append(answer.json()["completion_id"])
    served.append(complete(server, bearer(bob["token"]), user_id="sockpuppet-0").json()["completion_id"])
    db = sqlite3.connect(server.data_dir / "flywheel.sqlite3")
    marks = ",".join("?" * len(served))
    owners = dict(
        db.execute(f"SELECT completion_id, user_id FROM completions WHERE completion_id IN ({marks})", served)
    )
    assert [owners[cid] for cid in served] == [alice["person"]] * 4 + [bob["person"]]
    # Names never reach the store's completions; admins see who is who in the token list.
    listed = httpx.get(f"{server.url}/v1/admin/tokens", headers=server.admin).json()
    assert {t["name"]: t["person"] for t in listed}["alice"] == alice["person"]
    assert all("token" not in t for t in listed)


def test_telemetry_off_keeps_nothing(server: RunningBackend) -> None:
    secret_prefix = f"# private {uuid.uuid4().hex}\ndef f(x):\n    return "
    answer = httpx.post(
        f"{server.url}/v1/complete",
        json={"context": {"prefix": secret_prefix}, "telemetry": False},
        headers=server.client,
        timeout=60,
    )
    assert answer.status_code == 200
    completion_id = answer.json()["completion_id"]
    raw = b"".join(p.read_bytes() for p in server.data_dir.glob("flywheel.sqlite3*"))
    assert secret_prefix.split("\n")[0].encode() not in raw
    db = sqlite3.connect(server.data_dir / "flywheel.sqlite3")
    assert (
        db.execute("SELECT COUNT(*) FROM completions WHERE completion_id = ?", (completion_id,)).fetchone()[0]
        == 0
    )
    event = {"event_id": uuid.uuid4().hex, "completion_id": completion_id, "kind": "shown", "client_ts": 1.0}
    stored = httpx.post(f"{server.url}/v1/events", json={"events": [event]}, headers=server.client).json()
    assert stored["stored"] == 0 and stored["refused"][0]["reason"] == "unknown completion_id"


def test_nan_and_infinite_numbers_are_refused_per_event(server: RunningBackend) -> None:
    """Seen on a default `make up`: an event with client_ts NaN was stored."""
    completion_id = complete(server, server.client).json()["completion_id"]

    def event(**fields: str) -> str:
        base = {"event_id": uuid.uuid4().hex, "completion_id": completion_id, "kind": "shown"}
        return json.dumps(base)[:-1] + ", " + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"

    # Written by hand: NaN, Infinity and 1e400 are what a careless client's JSON encoder emits.
    batch = [
        event(client_ts="NaN"),
        event(client_ts="1e400"),
        event(client_ts="1.0", visible_ms="Infinity"),
        event(client_ts="1.0", similarity="NaN"),
        event(client_ts="1.0", visible_ms="900"),
    ]
    body = ('{"events": [' + ", ".join(batch) + "]}").encode()
    answer = httpx.post(
        f"{server.url}/v1/events",
        content=body,
        headers={"content-type": "application/json", **server.client},
    ).json()
    assert answer["stored"] == 1
    assert [r["index"] for r in answer["refused"]] == [0, 1, 2, 3]
    assert all("finite" in r["reason"] for r in answer["refused"]), answer["refused"]


def test_character_counts_longer_than_any_suggestion_are_refused(server: RunningBackend) -> None:
    """A count no suggestion can reach (an event text's limit) would inflate the dashboard's ARC."""
    completion_id = complete(server, server.client).json()["completion_id"]
    base = {"completion_id": completion_id, "client_ts": 1.0}
    batch = [
        {**base, "event_id": uuid.uuid4().hex, "kind": "accepted", "accepted_chars": 10**40},
        {**base, "event_id": uuid.uuid4().hex, "kind": "survival", "similarity": 1.0, "retained_chars": 1e30},
        {**base, "event_id": uuid.uuid4().hex, "kind": "accepted", "accepted_chars": 12},
    ]
    answer = httpx.post(f"{server.url}/v1/events", json={"events": batch}, headers=server.client).json()
    assert answer["stored"] == 1
    assert [(r["index"], r["reason"].split(":")[0]) for r in answer["refused"]] == [
        (0, "accepted_chars"),
        (1, "retained_chars"),
    ]


def test_tokens_api_revokes_at_once(server: RunningBackend) -> None:
    made = make_token(server, "leaked")
    assert complete(server, bearer(made["token"])).status_code == 200
    revoked = httpx.post(f"{server.url}/v1/admin/tokens/{made['id']}/revoke", headers=server.admin)
    assert revoked.status_code == 200
    assert complete(server, bearer(made["token"])).status_code == 401


async def test_revoking_every_token_closes_the_backend_it_never_opens_it(store: Store) -> None:
    token_id = await store.add_token("only", ADMIN, hash_token("fw_last"))
    auth = Authenticator(store, "")
    assert (await auth.identify("fw_last")).role == ADMIN
    await store.revoke_token(token_id)
    auth = Authenticator(store, "")
    assert await auth.identify("fw_last") is None
    assert await auth.identify("") is None and await auth.identify(None) is None


async def test_no_tokens_and_not_loopback_refuses_to_start(store: Store, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.backend.host = "0.0.0.0"
    with pytest.raises(NoTokens, match=r"0\.0\.0\.0"):
        await ensure_tokens(store, settings)
    assert not (tmp_path / "tokens").exists()
    settings.backend.host = "127.0.0.1"
    assert len(await ensure_tokens(store, settings)) == 2
    assert await ensure_tokens(store, settings) == []  # once only


def test_backend_bound_beyond_loopback_without_tokens_exits(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = backend_env(tiny_model_dir, tmp_path / "state", free_port(), FLYWHEEL_BACKEND__HOST="0.0.0.0")
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "backend"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no access tokens" in done.stdout + done.stderr
