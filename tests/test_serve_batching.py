"""The app under concurrency (a real uvicorn server on 127.0.0.1): micro-batching gives every
request its own answer, a full queue answers 503 and recovers, the API key guards /api, and
every request is logged in one line without its image."""
from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from pneumoscan.cli import main
from pneumoscan.deploy.auth import ApiKey
from pneumoscan.deploy.serve import Batching, ModelService, create_app
from pneumoscan.inference.predictor import Predictor

from conftest import CHROMIUM_ARGS

KEY = "test-key-0123456789-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def post(self, paths, headers=None) -> tuple[int, dict, dict]:
        boundary = uuid.uuid4().hex
        body = b""
        for path in paths:
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                     "Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/api/predict", body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
        return response.status, payload, {k.lower(): v for k, v in response.getheaders()}

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path)
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body


@pytest.fixture(scope="module")
def distinct(kermany_dir):
    """24 different real X-rays, both classes."""
    return [p for cls in ("NORMAL", "PNEUMONIA") for p in sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[:12]]


@pytest.fixture(scope="module")
def library(tiny_run, distinct):
    table = Predictor.from_run(tiny_run.root).predict(distinct)
    return {p.name: row for p, row in zip(distinct, table.to_dict("records"))}


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(tiny_run, distinct, library):
    service = ModelService(tiny_run.root, batching=Batching(max_batch=8, max_wait_ms=30))
    with LiveServer(create_app(tiny_run.root, service=service)) as live:
        jobs = [[distinct[i]] for i in range(len(distinct))] * 2 + [[distinct[i], distinct[-1 - i]] for i in range(8)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(live.post, jobs))
        for paths, (status, body, _) in zip(jobs, answers):
            assert status == 200
            assert [r["filename"] for r in body["results"]] == [p.name for p in paths]
            for path, result in zip(paths, body["results"]):
                want = library[path.name]
                assert result["probability"] == pytest.approx(want["probability"], abs=1e-5), path.name
                assert result["label"] == want["label"] and result["in_scope"] == want["in_scope"]
        batching = live.get("/health")["batching"]
    assert batching["images"] == 2 * len(distinct) + 16
    assert batching["batches"] < batching["images"]  # requests that arrived together were scored together
    service.close()


def test_a_full_queue_answers_503_and_recovers(tiny_run, distinct):
    service = ModelService(tiny_run.root, batching=Batching(max_batch=1, max_wait_ms=0, max_queue=4))
    gate = threading.Event()
    score = service.queue.score
    service.queue.score = lambda images: (gate.wait(30), score(images))[1]  # hold the worker: the queue fills
    with LiveServer(create_app(tiny_run.root, service=service)) as live:
        with ThreadPoolExecutor(10) as pool:
            pending = [pool.submit(live.post, [distinct[i]]) for i in range(10)]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in pending) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            gate.set()
            answers = [f.result() for f in pending]
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] * 4 + [503] * 6, statuses
        for status, body, headers in answers:
            if status == 503:
                assert headers["retry-after"] == "1" and "busy" in body["error"]
        assert live.get("/health")["status"] == "ok"
        status, body, _ = live.post([distinct[0]])  # recovered
        assert status == 200 and body["results"][0]["error"] is None
        too_many = live.post(distinct[:5])
        assert too_many[0] == 413 and "more than the queue holds" in too_many[1]["error"]
    service.close()


@pytest.fixture(scope="module")
def guarded(tiny_run, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api.key"
    key_file.write_text(KEY + "\n")
    service = ModelService(tiny_run.root)
    with LiveServer(create_app(tiny_run.root, service=service, api_key=ApiKey.from_file(key_file))) as live:
        yield live
    service.close()


def test_the_api_key_guards_every_api_request_and_health_stays_open(guarded, distinct):
    health = guarded.get("/health")
    assert health["status"] == "ok" and health["auth_required"] is True
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}):
        status, body, response_headers = guarded.post([distinct[0]], headers)
        assert status == 401 and "API key" in body["error"] and response_headers["www-authenticate"] == "Bearer"
    status, body, _ = guarded.post([distinct[0]], {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["results"][0]["label"] in ("NORMAL", "PNEUMONIA")


def test_requests_are_logged_one_line_each_without_the_image(guarded, distinct, caplog):
    with caplog.at_level(logging.INFO, logger="pneumoscan.requests"):
        guarded.post([distinct[0]], {"Authorization": f"Bearer {KEY}"})
        guarded.post([distinct[1]])
        guarded.get("/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "pneumoscan.requests"]
    assert len(lines) == 3, lines
    model_id = guarded.get("/health")["model_id"]
    assert lines[0].startswith("POST /api/predict 200 ") and f"model={model_id}" in lines[0] and "files=1" in lines[0]
    assert lines[1].startswith("POST /api/predict 401 ") and lines[2].startswith("GET /health 200 ")
    assert not any(distinct[0].name in line or distinct[1].name in line for line in lines)


@pytest.mark.parametrize("content, problem", [("short", "at least 16 characters"), ("two words here 0123456789", "without spaces")])
def test_a_bad_key_file_is_refused_before_the_model_loads(tiny_run, tmp_path, capsys, content, problem):
    key_file = tmp_path / "key"
    key_file.write_text(content)
    assert main(["serve", str(tiny_run.root), "--api-key-file", str(key_file), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert str(key_file) in err and problem in err
    assert main(["serve", str(tiny_run.root), "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the API key file" in capsys.readouterr().err


def test_the_page_asks_for_the_key_once(guarded, distinct, chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(guarded.url)
            page.wait_for_selector("#keyrow:not([hidden])")
            page.set_input_files("#files", [str(distinct[0])])
            page.click("#analyse")
            page.wait_for_selector("#status:has-text('needs an API key')", timeout=30_000)
            page.fill("#apikey", KEY)
            page.click("#analyse")
            page.wait_for_selector("#status:has-text('Done: 1 image(s)')", timeout=30_000)
            assert page.is_hidden("#keyrow")
            page.reload()  # same tab: the key is remembered, not asked again
            page.wait_for_selector("#model:has-text('Model:')")
            assert page.is_hidden("#keyrow")
            page.set_input_files("#files", [str(distinct[1])])
            page.click("#analyse")
            page.wait_for_selector("#status:has-text('Done: 1 image(s)')", timeout=30_000)
        finally:
            browser.close()
