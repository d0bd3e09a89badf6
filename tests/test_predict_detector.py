"""Getting YuNet: one short download attempt, a remembered failure, an honest fallback, --fetch-detector."""
from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest
from conftest import ROOT
from test_predict_inputs import run_predict

import faces
from faces import DetectorUnavailable, FaceDetector
from utils import UserError


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server for the YuNet URL: serves `body` (or a 503 when None), counts requests."""
    state = {"body": None, "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"] += 1
            if state["body"] is None:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(faces, "YUNET_URL", f"http://127.0.0.1:{httpd.server_port}/yunet.onnx")
    monkeypatch.delenv("AGE_GENDER_YUNET", raising=False)
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_offline_failure_is_remembered_and_explicit_yunet_retries(server, capsys):
    detector = FaceDetector("auto")
    assert detector.kind == "haar" and server["requests"] == 1
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: YuNet face detector unavailable")
    for hint in (faces.YUNET_URL, str(faces.YUNET_CACHE), "AGE_GENDER_YUNET", "--fetch-detector", "Haar"):
        assert hint in warning
    marker = faces.yunet_failure_marker()
    assert marker.is_file() and marker.parent == faces.YUNET_CACHE.parent

    assert FaceDetector("auto").kind == "haar" and server["requests"] == 1  # no second wait for the network
    assert "not retried for 24 h" in capsys.readouterr().err

    with pytest.raises(DetectorUnavailable, match="YuNet face detector unavailable.*--fetch-detector"):
        FaceDetector("yunet")  # explicit: tries again, and fails rather than falling back
    assert server["requests"] == 2

    marker.write_text(f"{time.time() - 25 * 3600:.0f}\nold failure\n")  # a day later: auto tries again
    FaceDetector("auto")
    assert server["requests"] == 3


def test_explicit_yunet_offline_is_one_line_on_the_command_line(server, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    photo.write_bytes((ROOT / "docs" / "astronaut_annotated.jpg").read_bytes())
    code, out, err = run_predict([str(photo), "--detector", "yunet"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("error: YuNet face detector unavailable") and "Traceback" not in err


def test_fetch_detector_downloads_verifies_and_says_where(server, monkeypatch, capsys):
    body = b"pretend YuNet weights " * 100
    server["body"] = body
    monkeypatch.setattr(faces, "YUNET_SHA256", hashlib.sha256(body).hexdigest())
    faces.yunet_failure_marker().parent.mkdir(parents=True)
    faces.yunet_failure_marker().write_text(f"{time.time():.0f}\nearlier failure\n")
    code, out, err = run_predict(["--fetch-detector"], capsys)
    assert code == 0 and err == ""
    assert str(faces.YUNET_CACHE) in out and faces.YUNET_CACHE.read_bytes() == body
    assert not faces.yunet_failure_marker().exists()  # fetched: the remembered failure is forgotten
    assert faces.find_yunet() == faces.YUNET_CACHE and server["requests"] == 1  # verified copy, no download
    code, out, _ = run_predict(["--fetch-detector"], capsys)
    assert code == 0 and str(faces.YUNET_CACHE) in out and server["requests"] == 1  # nothing to fetch again


@pytest.mark.parametrize("body", [None, b"a captive portal's login page"])
def test_fetch_detector_failure_is_one_line_and_leaves_nothing(server, body, capsys):
    server["body"] = body
    code, out, err = run_predict(["--fetch-detector"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert ("503" in err) if body is None else ("sha256" in err)
    left = {path.name for path in faces.YUNET_CACHE.parent.iterdir()}
    assert left == {faces.yunet_failure_marker().name}  # no model, no temporary file: only the failure's note


def test_a_valid_onnx_that_is_not_yunet_is_one_line(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    photo = tmp_path / "photo.png"
    photo.write_bytes((ROOT / "docs" / "astronaut_annotated.jpg").read_bytes())
    small = tmp_path / "identity.onnx"  # a real, small ONNX network that OpenCV loads, but not a face detector
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "identity", [value], [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(small))
    for wrong in (small, ROOT / "models" / "default" / "model.onnx"):  # the age model is also far too large
        code, _, err = run_predict([str(photo), "--detector-model", str(wrong)], capsys)
        assert code == 1 and err.count("\n") == 1 and "is not a YuNet face detector" in err, err


def test_a_bad_environment_variable_is_named_and_a_good_cached_copy_wins(yunet_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGE_GENDER_YUNET", str(tmp_path / "nowhere.onnx"))
    with pytest.raises(UserError, match=r"\$AGE_GENDER_YUNET names .*nowhere.onnx, which does not exist"):
        faces.find_yunet()
    monkeypatch.setenv("AGE_GENDER_YUNET", str(tmp_path))
    with pytest.raises(UserError, match=r"\$AGE_GENDER_YUNET is .*, a folder: name the YuNet file itself"):
        faces.find_yunet()
    faces.YUNET_CACHE.parent.mkdir(parents=True)
    faces.YUNET_CACHE.write_bytes(yunet_path.read_bytes())  # the README's --fetch-detector put a good copy here
    for kind in ("auto", "yunet"):
        assert FaceDetector(kind).yunet_path == faces.YUNET_CACHE
        warning = capsys.readouterr().err
        assert warning.count("\n") == 1 and "$AGE_GENDER_YUNET is" in warning and "using the verified copy" in warning
    not_yunet = tmp_path / "other.onnx"
    not_yunet.write_bytes(b"\x08" * 1000)
    monkeypatch.setenv("AGE_GENDER_YUNET", str(not_yunet))
    with pytest.raises(UserError, match=r"other.onnx \(\$AGE_GENDER_YUNET\) is not a YuNet face detector"):
        FaceDetector("auto")


def test_fetch_detector_offline_does_not_suggest_itself(server, capsys):
    code, _, err = run_predict(["--fetch-detector"], capsys)
    assert code == 1 and err.count("\n") == 1 and "--fetch-detector" not in err
    assert faces.YUNET_URL in err and "AGE_GENDER_YUNET" in err


def test_the_tests_find_yunet_where_the_readme_puts_it(yunet_path, tmp_path):
    """Not only ../shared/models: $AGE_GENDER_YUNET and the cache --fetch-detector fills, as predict.py."""
    from conftest import installed_yunet

    no_shared, cache = tmp_path / "no-shared", tmp_path / "cache" / faces.YUNET_FILE
    assert installed_yunet(no_shared, {}, cache) is None
    assert installed_yunet(no_shared, {"AGE_GENDER_YUNET": str(yunet_path)}, cache) == yunet_path
    cache.parent.mkdir()
    cache.write_bytes(yunet_path.read_bytes())
    assert installed_yunet(no_shared, {}, cache) == cache
    cache.write_bytes(b"an interrupted download")
    assert installed_yunet(no_shared, {}, cache) is None  # predict.py would not use it either
