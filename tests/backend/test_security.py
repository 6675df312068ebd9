"""Access control with tokens made by `flywheel token create`, request size limits, and retention."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import raw_store
from backend_traffic import upload
from conftest import backend_env, free_port, make_adapter, start_backend, stop_backend

from backend.auth import Authenticator, hash_token
from backend.retention import retain_once
from backend.store import Store
from core.config import Settings


def token_cli(model_dir: Path, data_dir: Path, *args: str) -> str:
    env = backend_env(model_dir, data_dir, free_port())
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "token", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_client_and_admin_tokens_guard_their_routes(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    admin = token_cli(tiny_model_dir, data_dir, "create", "--admin").strip().splitlines()[-1]
    client = token_cli(tiny_model_dir, data_dir, "create", "--name", "alice").strip().splitlines()[-1]
    revoked = token_cli(tiny_model_dir, data_dir, "create", "--name", "bob").strip().splitlines()[-1]
    listing = token_cli(tiny_model_dir, data_dir, "list")
    bob_id = next(line.split()[0] for line in listing.splitlines() if line.endswith("bob"))
    assert "revoked token" in token_cli(tiny_model_dir, data_dir, "revoke", bob_id)
    # Only hashes are stored: no token appears anywhere in the database.
    raw = b"".join(p.read_bytes() for p in data_dir.glob("flywheel.sqlite3*"))
    assert not any(t.encode() in raw for t in (admin, client, revoked))

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    # Uploads limited to half this adapter's size (other requests keep their own, larger limit).
    limit = sum(f.stat().st_size for f in adapter.iterdir()) // 2
    assert limit > 2000
    server = start_backend(tiny_model_dir, data_dir, FLYWHEEL_BACKEND__MAX_REQUEST_BYTES=str(limit))
    try:
        url = server.url
        as_client = {"authorization": f"Bearer {client}"}
        as_admin = {"authorization": f"Bearer {admin}"}
        body = {"context": {"prefix": "x = "}, "user_id": "u"}
        assert httpx.post(f"{url}/v1/complete", json=body, timeout=60).status_code == 401
        assert (
            httpx.post(
                f"{url}/v1/complete", json=body, headers={"authorization": "Bearer " + revoked}
            ).status_code
            == 401
        )
        assert httpx.post(f"{url}/v1/complete", json=body, headers=as_client, timeout=60).status_code == 200
        assert httpx.post(f"{url}/v1/complete", json=body, headers=as_admin, timeout=60).status_code == 200
        # Episode export, uploads, the dashboard's data and /metrics are the admin's.
        for path in ("/v1/episodes", "/admin/data.json", "/metrics"):
            assert httpx.get(f"{url}{path}", headers=as_client).status_code == 403, path
            assert httpx.get(f"{url}{path}", headers=as_admin).status_code == 200, path
        assert "flywheel_completions_total" in httpx.get(f"{url}/metrics", headers=as_admin).text
        assert httpx.get(f"{url}/admin", headers=as_client, follow_redirects=False).status_code == 303
        # A client may not upload (a body under the size limit, so the token check is what refuses it).
        meta = {"base_model": str(tiny_model_dir), "parent_version": "base"}
        small = {"metadata": json.dumps(meta)}
        assert httpx.post(f"{url}/v1/checkpoints", data=small, headers=as_client).status_code == 403
        # The adapter is bigger than this backend's upload limit: refused before it is buffered.
        too_big = upload(url, adapter, str(tiny_model_dir), **as_admin)
        assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
        assert httpx.get(f"{url}/v1/checkpoints", headers=as_client).json() == []
        status = {"state": "idle", "at": time.time(), "message": "waiting for episodes"}
        assert httpx.post(f"{url}/v1/trainer/status", json=status, headers=as_client).status_code == 403
        assert httpx.post(f"{url}/v1/trainer/status", json=status, headers=as_admin).status_code == 200
    finally:
        stop_backend(server)


async def test_authenticator_knows_each_tokens_role_and_person(store: Store) -> None:
    await store.add_token("t", "client", hash_token("fw_abc"))
    auth = Authenticator(store, "configured")
    client = await auth.identify("fw_abc")
    assert client is not None and client.role == "client" and not client.may("admin")
    operator = await auth.identify("configured")
    assert operator is not None and operator.role == "admin" and operator.may("client")
    assert client.person != operator.person
    assert await auth.identify("fw_abd") is None and await auth.identify(None) is None


async def test_retention_deletes_old_events_and_contexts_but_keeps_aggregates(
    store: Store, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.backend.retention_days = 30
    now = time.time()
    for age_days, cid in ((40, "old"), (1, "new")):
        created = now - age_days * 86400
        await store.record_completion(
            completion_id=cid,
            user_id="u",
            model_version="base",
            context={"prefix": "secret = 1"},
            prompt_ids=[1, 2],
            completion_ids=[3],
            token_logprobs=[-0.5],
            temperature=0.7,
            text="x + 1",
            created_at=created,
            latency_ms=12.0,
        )
        events = [
            {
                "event_id": uuid.uuid4().hex,
                "completion_id": cid,
                "kind": "shown",
                "client_ts": created,
                "visible_ms": 900,
            },
            {
                "event_id": uuid.uuid4().hex,
                "completion_id": cid,
                "kind": "accepted",
                "client_ts": created,
                "visible_ms": 900,
                "final": True,
            },
        ]
        assert (await store.add_events(events, received_at=created)).stored == 2
    await store.finalize_due(now, 660, settings.rewards, 250)
    before = await store.stats()
    assert await retain_once(store, settings, now) == {"events": 2, "completions": 1}
    assert await retain_once(store, settings, now) == {"events": 0, "completions": 0}
    assert await store.stats() == before  # the figures survive
    contexts = dict(raw_store.rows(store, "SELECT completion_id, context FROM completions"))
    assert contexts == {"old": "{}", "new": '{"prefix": "secret = 1"}'}
    assert raw_store.rows(store, "SELECT DISTINCT completion_id FROM events") == [("new",)]
    assert raw_store.rows(store, "SELECT COUNT(*) FROM episodes") == [(2,)]
