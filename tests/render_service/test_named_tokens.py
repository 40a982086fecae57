"""Issue 26 §4: several named API tokens per service (a token file), each with its own quotas
(megapixel-steps per hour, jobs at once) enforced in Redis for all replicas together, their use
visible to the admin, and rotation without a restart (the file is re-read when it changes).

Two render API processes on one private redis-server, no worker (jobs stay queued, which is what a
quota of jobs at once needs to be seen).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.jobs import RenderRequest, megapixel_steps
from shared.service.tokens import Quota, read_token_file
from tests.render_service.helpers import Api, body, unique_prefix
from tests.support import RedisServer

ALICE, ALICE_NEW, BOB, ADMIN = "alice-secret-0000001", "alice-secret-0000002", "bob-secret-000000001", "admin-secret"
JOB_COST = megapixel_steps(RenderRequest.model_validate(body()))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_tokens(path: Path, alice_tokens: list[str]) -> None:
    document = {
        "tokens": {
            "alice": {"tokens": alice_tokens, "megapixel_steps_per_hour": 2.5 * JOB_COST},  # two jobs an hour
            "bob": {"tokens": [BOB], "max_concurrent_jobs": 2},
        }
    }
    path.write_text(json.dumps(document))
    later = time.time() + 2  # a new modification time even on a coarse clock
    os.utime(path, (later, later))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    write_tokens(path, [ALICE])
    return path


@pytest.fixture(scope="module")
def apis(redis_server: RedisServer, token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    prefix, logs = unique_prefix("named"), tmp_path_factory.mktemp("named-logs")
    started = [Api(redis_server.url, prefix, logs, api_tokens_file=token_file, admin_token=ADMIN).start()
               for _ in range(2)]  # fmt: skip
    yield [api.url for api in started]
    for api in started:
        api.stop()


def submit(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/renders", json=body(), headers=auth(token), timeout=30)


def test_quotas_hold_for_all_replicas_and_the_admin_sees_the_use(apis: list[str]) -> None:
    # Alice: two jobs' work an hour, whichever replica takes them.
    assert submit(apis[0], ALICE).status_code == 202
    assert submit(apis[1], ALICE).status_code == 202
    refused = submit(apis[0], ALICE)
    assert refused.status_code == 429, refused.text
    assert "megapixel-steps per hour is used up" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Bob: two jobs at once; a third waits until one ends.
    bobs = [submit(apis[i], BOB) for i in range(2)]
    assert [b.status_code for b in bobs] == [202, 202]
    refused = submit(apis[1], BOB)
    assert refused.status_code == 429 and "2 jobs queued or running" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) > 0

    usage = httpx.get(f"{apis[1]}/v1/admin/usage", headers=auth(ADMIN), timeout=30)
    assert usage.status_code == 200, usage.text
    by_name = {t["name"]: t for t in usage.json()["tokens"]}
    assert by_name["alice"]["megapixel_steps_last_hour"] == pytest.approx(2 * JOB_COST, abs=1e-3)
    assert by_name["bob"]["jobs_active"] == 2 and by_name["bob"]["max_concurrent_jobs"] == 2
    assert ALICE not in usage.text and BOB not in usage.text
    assert httpx.get(f"{apis[1]}/v1/admin/usage", headers=auth(BOB), timeout=30).status_code == 401

    canceled = httpx.delete(f"{apis[1]}/v1/renders/{bobs[0].json()['id']}", headers=auth(BOB), timeout=30)
    assert canceled.status_code == 202
    assert submit(apis[0], BOB).status_code == 202  # an ended job frees its place


def test_a_token_is_rotated_without_a_restart(apis: list[str], token_file: Path) -> None:
    before = httpx.get(f"{apis[0]}/v1/renders", headers=auth(ALICE), timeout=30).json()["items"]
    write_tokens(token_file, [ALICE_NEW])  # the old secret is revoked, the new one takes its place
    deadline = time.monotonic() + 30
    while httpx.get(f"{apis[0]}/v1/renders", headers=auth(ALICE), timeout=30).status_code != 401:
        assert time.monotonic() < deadline, "the old token still works"
        time.sleep(0.3)
    for url in apis:
        while (answer := httpx.get(f"{url}/v1/renders", headers=auth(ALICE_NEW), timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.3)
        # The jobs belong to the name, so the new secret sees what the old one queued.
        assert {j["id"] for j in answer.json()["items"]} == {j["id"] for j in before}

    token_file.write_text("{not json")  # a broken file keeps the last good tokens
    later = time.time() + 4
    os.utime(token_file, (later, later))
    time.sleep(1.5)
    assert httpx.get(f"{apis[1]}/v1/renders", headers=auth(ALICE_NEW), timeout=30).status_code == 200
    write_tokens(token_file, [ALICE])


def test_a_bad_token_file_stops_the_start(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": {"alice": {"tokens": ["short"]}}}))
    api = Api(redis_server.url, unique_prefix("bad-tokens"), tmp_path, api_tokens_file=path)
    with pytest.raises(Exception):  # noqa: B017 - the helper reports a child that never answered
        api.start()
    api.stop()
    assert "a token of 'alice' is shorter than 16 characters" in api.child.log()


def test_the_documented_token_file_reads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "tokens.json"
    path.write_text(example)
    entries = read_token_file(path)
    assert {identity.name for _, identity in entries} == {"alice", "ci"} and len(entries) == 3
    alice = next(identity for _, identity in entries if identity.name == "alice")
    assert alice.quota == Quota(megapixel_steps_per_hour=2000, max_concurrent_jobs=4)
