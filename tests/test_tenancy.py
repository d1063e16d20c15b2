"""Tenancy over real HTTP: two named keys and an admin against every route that touches a task or a
template. The other key must get exactly what it gets for a task that does not exist (404
TASK_NOT_FOUND / TEMPLATE_NOT_FOUND); the owner and the admin get the content."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from maie.jobs.redis_server import redis_server_binary
from maie.principals import derived_name

from service import Service, free_port, start_service, wait_terminal

ALICE = "alice-key-4f0c2a9d81"
BOB = "bob-key-7be31d6c05"
ROOT = "root-key-c9a4e07f13"
KEYS = {"alice": ALICE, "bob": BOB, "root": ROOT}
TEMPLATE = {
    "id": "alice_notes",
    "prompt": "Summarise as JSON.\n{{ transcript }}",
    "schema": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]},
    "example": {"topic": "budget"},
}


def client(svc: Service, who: str) -> httpx.Client:
    return httpx.Client(base_url=svc.base_url, headers={"X-API-Key": KEYS[who]}, timeout=60)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(
        tmp_path_factory.mktemp("tenancy") / "data",
        env={
            "MAIE_API_KEYS": f"alice:{ALICE},bob:{BOB}",
            "MAIE_ADMIN_KEYS": f"root:{ROOT}",
            "MAIE_LOG_FORMAT": "json",
        },
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def alice_task(tenants: Service, shared_audio: Path) -> str:
    with client(tenants, "alice") as c:
        with (shared_audio / "jfk.flac").open("rb") as f:
            r = c.post("/v1/process", data={"features": "raw_transcript"}, files={"file": ("jfk.flac", f)})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        record = wait_terminal(c, task_id)
        assert record["status"] == "COMPLETE", record
        assert record["owner"] == "alice"
        return task_id


def sse_status(c: httpx.Client, task_id: str) -> tuple[int, dict]:
    with c.stream("GET", f"/v1/tasks/{task_id}/events") as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, r.json()
        for line in r.iter_lines():
            if line.startswith("data:"):
                return 200, json.loads(line[5:])
    return 200, {}


TASK_ROUTES: dict[str, Callable[[httpx.Client, str], tuple[int, dict]]] = {
    "GET status": lambda c, t: _json(c.get(f"/v1/status/{t}")),
    "GET events (SSE)": sse_status,
    "GET transcript txt": lambda c, t: _json(c.get(f"/v1/tasks/{t}/transcript", params={"format": "txt"})),
    "GET transcript srt": lambda c, t: _json(c.get(f"/v1/tasks/{t}/transcript", params={"format": "srt"})),
    "GET audio (Range)": lambda c, t: _json(c.get(f"/v1/tasks/{t}/audio", headers={"Range": "bytes=0-99"})),
}


def _json(r: httpx.Response) -> tuple[int, dict]:
    try:
        body = r.json()
    except ValueError:
        body = {"_bytes": len(r.content)}
    return r.status_code, body if isinstance(body, dict) else {"_list": body}


def test_task_routes_matrix(tenants: Service, alice_task: str) -> None:
    matrix: dict[str, dict[str, int]] = {}
    cross_key_successes = 0
    missing = str(uuid.uuid4())
    for route, call in TASK_ROUTES.items():
        row = matrix[route] = {}
        for who in ("alice", "bob", "root"):
            with client(tenants, who) as c:
                status, body = call(c, alice_task)
            row[who] = status
            if who == "bob":
                cross_key_successes += status < 400
                assert status == 404 and body["code"] == "TASK_NOT_FOUND", (route, body)
                # exactly the answer for an id that does not exist: no existence oracle
                with client(tenants, "bob") as c:
                    m_status, m_body = call(c, missing)
                assert (m_status, m_body["code"]) == (status, body["code"])
                assert m_body["detail"].replace(missing, alice_task) == body["detail"]
            else:
                assert status in (200, 206), (route, who, status, body)
    print("\nroute × role (owner alice, other bob, admin root):")
    for route, row in matrix.items():
        print(f"  {route:22} " + "  ".join(f"{w}={s}" for w, s in row.items()))
    print(f"cross-key successes: {cross_key_successes}")
    assert cross_key_successes == 0


def test_audio_served_to_owner_with_range(tenants: Service, alice_task: str, shared_audio: Path) -> None:
    original = (shared_audio / "jfk.flac").read_bytes()
    with client(tenants, "alice") as c:
        whole = c.get(f"/v1/tasks/{alice_task}/audio")
        part = c.get(f"/v1/tasks/{alice_task}/audio", headers={"Range": "bytes=100-199"})
    assert whole.status_code == 200 and whole.content == original
    assert whole.headers["content-type"] == "audio/flac"
    assert part.status_code == 206 and part.content == original[100:200]


def test_task_list_shows_only_own_tasks(tenants: Service, alice_task: str) -> None:
    with client(tenants, "bob") as c:
        r = c.post("/v1/process_text", json={"text": "Bob's own text.", "features": ["clean_transcript"]})
        assert r.status_code == 202
        bob_task = r.json()["task_id"]
        bob_list = [t["task_id"] for t in c.get("/v1/tasks", params={"limit": 200}).json()]
    with client(tenants, "alice") as c:
        alice_list = [t["task_id"] for t in c.get("/v1/tasks", params={"limit": 200}).json()]
        assert c.get(f"/v1/status/{bob_task}").status_code == 404  # process_text tasks likewise
    with client(tenants, "root") as c:
        root_list = [t["task_id"] for t in c.get("/v1/tasks", params={"limit": 200}).json()]
        assert c.get(f"/v1/status/{bob_task}").json()["owner"] == "bob"
    assert bob_task in bob_list and alice_task not in bob_list
    assert alice_task in alice_list and bob_task not in alice_list
    assert {alice_task, bob_task} <= set(root_list)


def test_openai_endpoint_task_belongs_to_its_caller(tenants: Service, shared_audio: Path) -> None:
    with client(tenants, "bob") as c, (shared_audio / "jfk.flac").open("rb") as f:
        r = c.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("jfk.flac", f)})
    assert r.status_code == 200, r.text
    task_id = r.headers["X-MAIE-Task-Id"]
    with client(tenants, "alice") as c:
        assert c.get(f"/v1/status/{task_id}").status_code == 404
        assert c.get(f"/v1/tasks/{task_id}/transcript").status_code == 404
    with client(tenants, "bob") as c:
        assert c.get(f"/v1/status/{task_id}").json()["owner"] == "bob"


def test_a_live_stream_serves_only_its_own_task(tenants: Service, shared_audio: Path) -> None:
    """A streaming transcription follows the one task its own request created (there is no way to name
    another), and while it runs, that task's live events are its owner's (and an admin's) only."""
    with (
        client(tenants, "bob") as bob,
        (shared_audio / "jfk.flac").open("rb") as f,
        bob.stream("POST", "/v1/audio/transcriptions", data={"stream": "true"}, files={"file": ("j.flac", f)}) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        task_id = r.headers["X-MAIE-Task-Id"]
        with client(tenants, "alice") as alice:
            status, body = sse_status(alice, task_id)
            assert (status, body["code"]) == (404, "TASK_NOT_FOUND")
            assert alice.get(f"/v1/status/{task_id}").status_code == 404
        with client(tenants, "root") as root:
            assert sse_status(root, task_id)[0] == 200
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1]["type"] == "transcript.text.done" and "ask not what your country" in events[-1]["text"]
    with client(tenants, "bob") as bob:
        assert bob.get(f"/v1/status/{task_id}").json()["owner"] == "bob"


def test_delete_by_other_key_is_404_and_leaves_the_task(tenants: Service, shared_audio: Path) -> None:
    with client(tenants, "alice") as c, (shared_audio / "jfk.flac").open("rb") as f:
        task_id = c.post("/v1/process", files={"file": ("jfk.flac", f)}).json()["task_id"]
    with client(tenants, "bob") as c:
        r = c.delete(f"/v1/tasks/{task_id}")
        assert (r.status_code, r.json()["code"]) == (404, "TASK_NOT_FOUND")
    with client(tenants, "alice") as c:
        record = wait_terminal(c, task_id)
        assert record["status"] == "COMPLETE"  # bob's DELETE neither cancelled nor deleted it
    with client(tenants, "root") as c:
        assert c.delete(f"/v1/tasks/{task_id}").status_code == 200
    with client(tenants, "alice") as c:
        assert c.get(f"/v1/status/{task_id}").status_code == 404
    assert not (tenants.data_dir / "audio" / task_id).exists()


def test_templates_are_owned(tenants: Service, shared_audio: Path) -> None:
    tid = TEMPLATE["id"]
    with client(tenants, "alice") as c:
        assert c.post("/v1/templates", json=TEMPLATE).status_code == 201
        assert tid in [t["id"] for t in c.get("/v1/templates").json()]
        assert c.get(f"/v1/templates/{tid}").json()["owner"] == "alice"
    with client(tenants, "bob") as c:
        assert tid not in [t["id"] for t in c.get("/v1/templates").json()]
        for r in (
            c.get(f"/v1/templates/{tid}"),
            c.get(f"/v1/templates/{tid}/schema"),
            c.put(f"/v1/templates/{tid}", json={"name": "mine now"}),
            c.delete(f"/v1/templates/{tid}"),
            c.get(f"/v1/templates/{tid}", params={"owner": "alice"}),
        ):
            assert (r.status_code, r.json()["code"]) == (404, "TEMPLATE_NOT_FOUND"), r.text
        # using it for a summary is refused the same way, before any audio is read
        r = c.post(
            "/v1/process",
            data={"features": "summary", "template_id": tid},
            files={"file": ("jfk.flac", (shared_audio / "jfk.flac").read_bytes())},
        )
        assert (r.status_code, r.json()["code"]) == (404, "TEMPLATE_NOT_FOUND")
        r = c.post("/v1/process_text", json={"text": "x", "features": ["summary"], "template_id": tid})
        assert (r.status_code, r.json()["code"]) == (404, "TEMPLATE_NOT_FOUND")
        # ids are unique per owner: bob may use the same id for his own template (no 409 oracle)
        assert c.post("/v1/templates", json={**TEMPLATE, "example": {"topic": "bob"}}).status_code == 201
        assert c.get(f"/v1/templates/{tid}").json()["example"] == {"topic": "bob"}
        # only admins create shared templates
        r = c.post("/v1/templates", json={**TEMPLATE, "id": "bob_shared", "shared": True})
        assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN")
        # built-ins stay read-only
        r = c.delete("/v1/templates/generic_summary_en_v2")
        assert (r.status_code, r.json()["code"]) == (403, "TEMPLATE_READ_ONLY")
    with client(tenants, "alice") as c:
        assert c.get(f"/v1/templates/{tid}").json()["example"] == {"topic": "budget"}  # untouched
    with client(tenants, "root") as c:
        owners = sorted(t["owner"] for t in c.get("/v1/templates").json() if t["id"] == tid)
        assert owners == ["alice", "bob"]
        assert c.get(f"/v1/templates/{tid}", params={"owner": "alice"}).json()["owner"] == "alice"
        assert c.put(f"/v1/templates/{tid}", params={"owner": "bob"}, json={"name": "by admin"}).status_code == 200
        r = c.post("/v1/templates", json={**TEMPLATE, "id": "team_notes", "shared": True})
        assert r.status_code == 201 and r.json()["scope"] == "shared"
    with client(tenants, "bob") as c:
        assert c.get("/v1/templates/team_notes").json()["scope"] == "shared"
        r = c.put("/v1/templates/team_notes", json={"name": "hijack"})
        assert (r.status_code, r.json()["code"]) == (403, "TEMPLATE_READ_ONLY")
        r = c.post(
            "/v1/process_text", json={"text": "Bob's notes.", "features": ["summary"], "template_id": "team_notes"}
        )
        assert r.status_code == 202
        assert c.delete(f"/v1/templates/{tid}").status_code == 200  # his own
    with client(tenants, "alice") as c:
        assert c.get(f"/v1/templates/{tid}").status_code == 200  # alice's survives bob's delete


def test_audit_trail_names_keys_never_keys(tenants: Service, alice_task: str) -> None:
    with client(tenants, "bob") as c:
        c.get(f"/v1/status/{alice_task}")
    with client(tenants, "alice") as c:
        c.get(f"/v1/tasks/{alice_task}/transcript")
    time.sleep(0.3)
    events = []
    for line in tenants.log().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and "audit" in item:
            events.append(item["audit"])
    mine = [e for e in events if e["task_id"] == alice_task]
    assert {"key": "bob", "action": "read", "outcome": "denied"}.items() <= next(
        e for e in mine if e["key"] == "bob"
    ).items()
    assert any(e["key"] == "alice" and e["action"] == "export" and e["outcome"] == "ok" for e in mine)
    assert any(e["key"] == "alice" and e["action"] == "submit" for e in mine)
    assert all(set(e) == {"key", "action", "route", "task_id", "outcome"} for e in events)
    log = tenants.log()
    for key in KEYS.values():
        assert key not in log
    assert "ask not what your country" not in log.lower()


def test_error_bodies_carry_no_server_path(tenants: Service) -> None:
    with client(tenants, "alice") as c:
        # sniffed as audio from its first bytes, unreadable past them: the probe refuses it (415)
        body = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64
        r = c.post("/v1/process", files={"file": ("broken.wav", body)})
    assert r.status_code == 415, r.text
    assert str(tenants.data_dir.resolve()) not in r.text and "source." not in r.text
    with client(tenants, "root") as c:
        models = c.get("/v1/models").text
    assert "/site-packages/" not in models and str(Path.home()) not in models


def test_bare_key_gets_a_derived_name(tmp_path: Path, shared_audio: Path) -> None:
    bare = "bare-key-0a1b2c3d4e5f"
    svc = start_service(tmp_path / "data", workers=0, env={"MAIE_API_KEYS": bare})
    try:
        svc.wait_ready(need_worker=False)
        with httpx.Client(base_url=svc.base_url, headers={"Authorization": f"Bearer {bare}"}) as c:
            r = c.post("/v1/process_text", json={"text": "hello", "features": ["clean_transcript"]})
            assert r.status_code == 202
            record = c.get(f"/v1/status/{r.json()['task_id']}").json()
        assert record["owner"] == derived_name(bare) and bare not in json.dumps(record)
        assert bare not in svc.log()
    finally:
        svc.stop()


def _run_redis_on_aof(redis_dir: Path, script: Callable[[object], None]) -> None:
    """Open the embedded Redis's own AOF with a private redis-server, as an old release would have."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        script(r)
        r.execute_command("BGREWRITEAOF")
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait()


def test_tasks_and_templates_from_before_owners_are_admin_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = {"MAIE_API_KEYS": f"alice:{ALICE}", "MAIE_ADMIN_KEYS": f"root:{ROOT}"}
    svc = start_service(data, workers=0, env=keys)
    try:
        svc.wait_ready(need_worker=False)
        with client(svc, "alice") as c:
            task_id = c.post("/v1/process_text", json={"text": "old", "features": ["clean_transcript"]}).json()[
                "task_id"
            ]
    finally:
        svc.stop()

    # What the previous release wrote: no owner on the record, no per-key index, a top-level template.
    def strip_owner(r: object) -> None:
        r.hdel(f"maie:task:{task_id}", "owner")  # type: ignore[attr-defined]
        r.delete("maie:tasks-of:alice")  # type: ignore[attr-defined]

    _run_redis_on_aof(data / "redis", strip_owner)
    legacy = data / "templates" / "old_notes"
    legacy.mkdir(parents=True)
    for name in ("prompt", "schema", "example"):
        suffix = ".jinja" if name == "prompt" else ".json"
        value = TEMPLATE[name]
        (legacy / f"{name}{suffix}").write_text(value if isinstance(value, str) else json.dumps(value))

    svc = start_service(data, workers=0, env=keys)
    try:
        svc.wait_ready(need_worker=False)
        with client(svc, "alice") as c:
            assert c.get(f"/v1/status/{task_id}").status_code == 404
            assert task_id not in [t["task_id"] for t in c.get("/v1/tasks").json()]
            assert c.get("/v1/templates/old_notes").status_code == 404
        with client(svc, "root") as c:
            record = c.get(f"/v1/status/{task_id}").json()
            assert record["task_id"] == task_id and record.get("owner") is None
            assert task_id in [t["task_id"] for t in c.get("/v1/tasks").json()]
            assert c.get("/v1/templates/old_notes").json()["scope"] == "legacy"
    finally:
        svc.stop()
