"""The web app: JSON API and page through FastAPI's TestClient, then the page in real headless Chromium."""
import base64
import hashlib
import io
import socket
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pneumoscan.inference.predictor import Predictor
from pneumoscan.deploy.serve import ModelService, create_app

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

from conftest import CHROMIUM_ARGS


@pytest.fixture(scope="module")
def service(tiny_run):
    return ModelService(tiny_run.root)


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    return TestClient(create_app(service.run.root, service=service))


@pytest.fixture(scope="module")
def images(kermany_dir):
    return [sorted((kermany_dir / "test" / cls).glob("*.jpeg"))[i] for cls in ("NORMAL", "PNEUMONIA") for i in (0, 1)]


@pytest.fixture(scope="module")
def expected(tiny_run, images):
    """What the library says for the same files: the app must agree exactly."""
    table = Predictor.from_run(tiny_run.root).predict(images)
    return {p.name: row for p, row in zip(images, table.to_dict("records"))}


def upload(path, name=None):
    return ("file", (name or path.name, path.read_bytes(), "image/jpeg"))


def test_health_names_the_model(client, tiny_run):
    body = client.get("/health").json()
    sha = hashlib.sha256(tiny_run.model_file.read_bytes()).hexdigest()
    assert body["status"] == "ok"
    assert body["model_id"] == f"{tiny_run.root.name}-{sha[:12]}"
    assert body["engine"] == "keras"
    assert body["threshold"] == pytest.approx(tiny_run.metrics()["threshold"]["value"])


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    assert '<input type="file" id="files" name="file" multiple' in page
    assert "http://" not in page and "https://" not in page  # no CDN, no external resource
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_predict_one_image_matches_the_library(client, images, expected):
    response = client.post("/api/predict?gradcam=1", files=[upload(images[2])])
    assert response.status_code == 200
    (result,) = response.json()["results"]
    want = expected[images[2].name]
    assert result["filename"] == images[2].name
    assert result["probability"] == pytest.approx(want["probability"], abs=1e-6)
    assert result["label"] == want["label"]
    assert result["error"] is None and result["warnings"] == []
    overlay = Image.open(io.BytesIO(base64.b64decode(result["gradcam_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (64, 64) and overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 0  # a real picture, not a blank square


def test_predict_several_with_bad_files_mixed_in(client, images, expected, tmp_path, monkeypatch):
    # Uploads are decoded from memory: not even a temporary file is written.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = [upload(images[0]), ("file", ("notes.jpeg", b"this is not an X-ray", "image/jpeg")),
             upload(images[1]), ("file", ("../../etc/empty.png", b"", "image/png")), upload(images[3])]
    response = client.post("/api/predict", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [images[0].name, "notes.jpeg", images[1].name, "empty.png", images[3].name]
    for result in (results[0], results[2], results[4]):
        want = expected[result["filename"]]
        assert result["probability"] == pytest.approx(want["probability"], abs=1e-6)
        assert result["label"] == want["label"] and result["error"] is None
        assert "gradcam_png_base64" not in result  # only on request
    assert "not a readable image" in results[1]["error"] and results[1]["probability"] is None
    assert results[3]["error"] == "empty file"
    assert "pneumoscan-upload" not in response.text  # our temporary paths never reach the client
    assert list(tmp_path.iterdir()) == []


def test_oversize_upload_is_refused_with_413(service, kermany_dir):
    from fastapi.testclient import TestClient

    small = TestClient(create_app(service.run.root, service=service, max_upload_mb=0.05))  # 50 KB
    native = max((kermany_dir / "val" / "NORMAL").glob("*.jpeg"), key=lambda p: p.stat().st_size)
    assert native.stat().st_size > 60 * 1024
    response = small.post("/api/predict", files=[upload(native)])
    assert response.status_code == 413
    assert "upload too large" in response.json()["error"] and "0.05 MB per file" in response.json()["error"]
    # A body larger than every allowed file together is refused before it is parsed...
    many = small.post("/api/predict", files=[upload(native, f"{i}.jpeg") for i in range(17)])
    assert many.status_code == 413 and "request of" in many.json()["error"]
    # ...and so is one sent in chunks, without a Content-Length to check up front.
    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpeg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunked = small.post("/api/predict", content=iter([head] + [b"\xff" * 65536] * 40),
                         headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413 and "request body over" in chunked.json()["error"]


def test_requests_without_a_file_get_a_clear_400(client):
    no_body = client.post("/api/predict")
    assert no_body.status_code == 400 and "multipart/form-data" in no_body.json()["error"]
    other_field = client.post("/api/predict", files=[("picture", ("a.jpeg", b"x", "image/jpeg"))])
    assert other_field.status_code == 400
    assert other_field.json()["error"].startswith("no file uploaded")


def test_onnx_engine_app_matches_keras(tiny_run, images, expected):
    from fastapi.testclient import TestClient

    onnx = ModelService(tiny_run.root, engine="onnx")
    client = TestClient(create_app(tiny_run.root, service=onnx))
    assert client.get("/health").json()["engine"] == "onnx"
    (result,) = client.post("/api/predict?gradcam=1", files=[upload(images[1])]).json()["results"]
    assert result["probability"] == pytest.approx(expected[images[1].name]["probability"], abs=1e-4)
    assert result["gradcam_png_base64"]  # Grad-CAM still works: it uses the Keras model


def test_internal_error_is_json_without_traceback(service, images, monkeypatch):
    from fastapi.testclient import TestClient

    async def broken(*_):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service, "analyse_async", broken)
    response = TestClient(create_app(service.run.root, service=service), raise_server_exceptions=False).post(
        "/api/predict", files=[upload(images[0])])
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); the server log has the details"}


# --- the page in a real browser ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(service):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service.run.root, service=service), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_upload_through_the_page_in_chromium(live_server, service, images, expected, chromium):
    from playwright.sync_api import sync_playwright

    requested = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.goto(live_server)
            # (the page's CSP forbids eval, so waits use selectors, not wait_for_function)
            page.wait_for_selector(f"#model:has-text('{service.model_id}')")
            page.set_input_files("#files", [str(images[3]), str(images[0])])
            page.click("#analyse")
            page.wait_for_selector("#status:has-text('Done: 2 image(s)')", timeout=30_000)
            cards = page.query_selector_all("article.result")
            shown = {c.get_attribute("data-filename"): c for c in cards}
            assert set(shown) == {images[3].name, images[0].name}
            for name, card in shown.items():
                want = expected[name]
                assert float(card.get_attribute("data-probability")) == pytest.approx(want["probability"], abs=1e-6)
                assert card.query_selector(".label").inner_text() == want["label"]
                assert card.query_selector(".probability").inner_text() == f"{100 * want['probability']:.1f}%"
                assert card.eval_on_selector("img.gradcam", "img => img.complete && img.naturalWidth") == 64
        finally:
            browser.close()
    assert all(url.startswith(live_server) or url.startswith("data:") for url in requested), requested


def test_every_upload_is_decoded_once_from_memory(client, images, monkeypatch):
    import pneumoscan.inference.predictor as predictor_module

    seen = []
    real = predictor_module.load_image
    monkeypatch.setattr(predictor_module, "load_image",
                        lambda source, size, name=None: seen.append((type(source), name)) or real(source, size, name))
    response = client.post("/api/predict?gradcam=1", files=[upload(images[0]), upload(images[1])])
    assert response.status_code == 200
    assert seen == [(bytes, images[0].name), (bytes, images[1].name)]  # once each, Grad-CAM included


def test_nothing_predicted_is_422_with_the_same_json(client, images):
    files = [("file", ("a.jpeg", b"junk", "image/jpeg")), ("file", ("b.png", b"", "image/png"))]
    response = client.post("/api/predict", files=files)
    assert response.status_code == 422
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["a.jpeg", "b.png"]
    assert all(r["error"] and r["probability"] is None for r in body["results"])
    assert {"model_id", "engine", "threshold"} <= set(body)
    # One good file among bad ones: 200.
    response = client.post("/api/predict", files=[files[0], upload(images[0])])
    assert response.status_code == 200 and response.json()["results"][1]["error"] is None


def test_the_file_count_limit(service, images):
    from fastapi.testclient import TestClient

    limited = TestClient(create_app(service.run.root, service=service, max_files=3))
    files = [upload(images[i % len(images)], f"x{i}.jpeg") for i in range(3)]
    assert limited.post("/api/predict", files=files).status_code == 200
    response = limited.post("/api/predict", files=files + [upload(images[0], "x3.jpeg")])
    assert response.status_code in (400, 413)
    assert "Too many files" in response.json()["error"] or "files" in response.json()["error"]
    # The default: 16 files pass, 17 do not.
    default = TestClient(create_app(service.run.root, service=service))
    sixteen = [upload(images[i % len(images)], f"y{i}.jpeg") for i in range(16)]
    assert default.post("/api/predict", files=sixteen).status_code == 200
    response = default.post("/api/predict", files=sixteen + [upload(images[0], "y16.jpeg")])
    assert response.status_code in (400, 413) and "error" in response.json()
