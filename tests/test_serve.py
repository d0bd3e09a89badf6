"""serve.py's REST API over a real loopback HTTP server: real faces, bad uploads, concurrent clients."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from conftest import ROOT

import serve
from predict import AgeGenderPredictor
from utils import finite_json

MAX_UPLOAD_BYTES, MAX_PIXELS = 1_000_000, 2_000_000
PLACEMENTS = [(30, 60, 200), (280, 110, 160), (500, 40, 240), (790, 150, 140)]  # x, y, side of each face


@pytest.fixture(scope="module")
def group_photo(utkface_dir, tmp_path_factory) -> Path:
    """Four real UTKFace faces at different sizes on a plain canvas, as a JPEG."""
    chips = sorted(utkface_dir.iterdir())[10:14]
    canvas = np.full((420, 1000, 3), 170, np.uint8)
    for chip, (x, y, side) in zip(chips, PLACEMENTS):
        canvas[y:y + side, x:x + side] = cv2.resize(cv2.imread(str(chip)), (side, side), interpolation=cv2.INTER_AREA)
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.fixture(scope="module")
def server(yunet_path) -> str:
    """serve.py's app and server, on a free loopback port, in a thread of this process; yields its URL."""
    app = serve.create_app(AgeGenderPredictor(), MAX_UPLOAD_BYTES, MAX_PIXELS)
    http_server = serve.create_http_server(app, "127.0.0.1", 0, 4, MAX_UPLOAD_BYTES)
    thread = threading.Thread(target=http_server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http_server.effective_port}"
    http_server.close()


def post_image(url: str, data: bytes, name: str = "photo.jpg", field: str = "image", **params) -> requests.Response:
    return requests.post(f"{url}/predict", files={field: (name, data)}, params=params, timeout=60)


def test_health_and_page(server):
    health = requests.get(f"{server}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = requests.get(server, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "predict?annotate=1" in page.text


def test_predict_answers_like_predict_py(server, group_photo):
    response = post_image(server, group_photo.read_bytes(), name="group.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    result = response.json()
    assert set(result) == {"image", "faces"} and result["image"] == "group.jpg"
    assert len(result["faces"]) == len(PLACEMENTS)
    expected = AgeGenderPredictor().predict(cv2.imread(str(group_photo)))  # what predict.py --json gives
    assert result["faces"] == json.loads(finite_json(expected))

    annotated = post_image(server, group_photo.read_bytes(), annotate="1").json()
    assert annotated["faces"] == result["faces"]
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(annotated["annotated_jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(group_photo))
    assert picture.shape == original.shape and np.abs(picture.astype(int) - original).mean() > 1


def test_concurrent_clients_get_the_same_answers(server, group_photo):
    data = group_photo.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_image(server, data), range(8)))
    assert all(answer.status_code == 200 for answer in answers)
    assert all(answer.json() == answers[0].json() for answer in answers) and len(answers[0].json()["faces"]) == 4


def png_bytes(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.full((height, width, 3), 128, np.uint8))[1].tobytes()


@pytest.mark.parametrize("send, status, message", [
    (lambda url: requests.post(f"{url}/predict", timeout=10), 400, "form field 'image'"),
    (lambda url: requests.post(f"{url}/predict", data={"image": "photo.jpg"}, timeout=10), 400, "form field 'image'"),
    (lambda url: post_image(url, png_bytes(50, 50), field="photo"), 400, "received: 'photo'"),
    (lambda url: post_image(url, b"plain text, not a picture", name="notes.jpg"), 400, "notes.jpg: not an image"),
    (lambda url: post_image(url, b"", name="empty.jpg"), 400, "empty.jpg: not an image"),
    (lambda url: post_image(url, np.random.default_rng(0).bytes(MAX_UPLOAD_BYTES + 10)), 413, "upload too large"),
    (lambda url: post_image(url, png_bytes(2000, 1001), name="wide.png"), 400, "wide.png: 2000x1001 pixels is too"),
    (lambda url: requests.get(f"{url}/predict", timeout=10), 405, "not allowed"),
    (lambda url: requests.get(f"{url}/nothing-here", timeout=10), 404, "not found"),
])
def test_bad_requests_get_a_json_error(server, send, status, message):
    response = send(server)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"] and "Traceback" not in response.text


def test_far_too_large_an_upload_gets_a_json_413_too(server):
    """Beyond 4x the limit waitress refuses the request before Flask sees it: still JSON, not its text page."""
    import socket

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: %d\r\n\r\n" % (5 * MAX_UPLOAD_BYTES + 2**21))
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": f"upload too large (limit {MAX_UPLOAD_BYTES / 2**20:.1f} MB)"}


def test_the_page_has_a_favicon(server):
    page = requests.get(server, timeout=10).text
    assert 'rel="icon" href="favicon.ico"' in page
    icon = requests.get(f"{server}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(icon.content, np.uint8), cv2.IMREAD_UNCHANGED).shape == (32, 32, 4)


def test_a_truncated_jpeg_is_a_clear_400(server, group_photo):
    data = group_photo.read_bytes()
    response = post_image(server, data[:len(data) // 2], name="cut.jpg")
    assert response.status_code == 400 and response.json()["error"].startswith("cut.jpg: truncated JPEG")


def test_command_line_binds_to_loopback_and_reports_a_busy_port(yunet_path):
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), process.stderr.read() if not line else line
        url = line.split()[2]
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        port = url.rsplit(":", 1)[1]
        busy = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--port", port], capture_output=True,
                              text=True, timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert not serve.is_loopback("0.0.0.0") and serve.is_loopback("::1") and serve.is_loopback("localhost")


def test_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "POST /predict" in help_text
    assert "Why Flask" not in help_text and len(help_text.splitlines()) < 45  # usage; the reasons are in the README
    with pytest.raises(SystemExit) as exit_info:
        serve.parse_args(["--port", "-1"])
    assert exit_info.value.code == 2 and "below the minimum" in capsys.readouterr().err
