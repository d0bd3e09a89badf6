"""A web page and a REST API for age and gender: pick or drop a photo, see every face labelled.

    python serve.py                                          # http://127.0.0.1:8000 (this machine only)
    python serve.py --host 0.0.0.0 --port 8080 --threads 8   # reachable from the network: no authentication!
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?annotate=1'
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?min_gender_confidence=0.8'   # "unknown" below 0.8

GET /            the page: pick or drop a photo, see the annotated picture and a table of the faces
POST /predict    multipart upload in the form field "image"; answers predict.py --json's object for one
                 image, {"image": filename, "faces": [...]}, plus "annotated_jpeg" (base64) with ?annotate=1;
                 ?min_gender_confidence=P reports gender "unknown" below P, as predict.py's option
GET /health      {"status": "ok"} once the model is loaded

Errors are JSON too, {"error": "..."}: 400 for a missing field, an unreadable image, too many pixels
or a min_gender_confidence outside 0..1, 413 for an upload over --max-upload-mb, never a stack trace.
Flask on waitress (the README says why).
"""
from __future__ import annotations

import argparse
import base64
import io
import ipaddress
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from annotate import COLOURS, annotate, withhold_gender
from faces import load_photo, quiet_opencv
from predict import DEFAULT_MODEL, AgeGenderPredictor
from utils import (HelpFormatter, UserError, finite_json, float_between, int_at_least, positive_float, positive_int,
                   run_cli)

if TYPE_CHECKING:
    from waitress.server import BaseWSGIServer, MultiSocketServer

HOST, PORT, THREADS = "127.0.0.1", 8000, 4
MAX_UPLOAD_MB = 10.0  # bytes of one request
MAX_MEGAPIXELS = 25.0  # pixels of one photo: bounds the memory a request can take (3 bytes per pixel, decoded)
JPEG_QUALITY = 90


def port_number(text: str) -> int:
    port = int_at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--host", default=HOST, help="address to listen on; 0.0.0.0 opens it to the network")
    parser.add_argument("--port", type=port_number, default=PORT, help="0: any free port")
    parser.add_argument("--threads", type=positive_int, default=THREADS, help="requests served at once")
    parser.add_argument("--max-upload-mb", type=positive_float, default=MAX_UPLOAD_MB, help="largest upload")
    parser.add_argument("--max-megapixels", type=positive_float, default=MAX_MEGAPIXELS, help="largest photo")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="an ONNX model carrying its card (export.py, quantize.py)")
    parser.add_argument("--detector", choices=["yunet", "haar", "none"], default="yunet", help="face detector")
    parser.add_argument("--detector-model", help="YuNet .onnx file (default: $AGE_GENDER_YUNET, else a download)")
    return parser.parse_args(argv)


def json_response(data: dict, status: int = 200) -> Response:
    return Response(finite_json(data), status=status, mimetype="application/json")


def decode_upload(data: bytes, filename: str, max_pixels: int) -> np.ndarray:
    """The uploaded photo as BGR pixels, checked the way predict.py checks a file; UserError if it can't be."""
    from PIL import Image

    try:  # the header alone: the pixel count is checked before anything is decoded
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:
        raise UserError(f"{filename}: not an image this tool can read") from None
    if width * height > max_pixels:
        raise UserError(f"{filename}: {width}x{height} pixels is too large (limit {max_pixels:,} pixels)")
    with tempfile.TemporaryDirectory() as folder:  # load_photo reads files: EXIF rotation, truncated JPEGs
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return load_photo(path)
        except UserError as error:
            raise UserError(str(error).replace(str(path), filename)) from None


def upload_too_large(max_upload_bytes: int) -> str:
    return f"upload too large (limit {max_upload_bytes / 2**20:.1f} MB)"


def favicon_png() -> bytes:
    """A 32x32 icon for the browser's tab: a face-box-coloured ring (annotate.COLOURS)."""
    icon = np.zeros((32, 32, 4), np.uint8)
    cv2.circle(icon, (16, 16), 12, (*COLOURS["female"], 255), 4, cv2.LINE_AA)
    cv2.circle(icon, (16, 16), 5, (*COLOURS["male"], 255), cv2.FILLED, cv2.LINE_AA)
    return cv2.imencode(".png", icon)[1].tobytes()


def create_app(predictor: AgeGenderPredictor, max_upload_bytes: int = round(MAX_UPLOAD_MB * 2**20),
               max_pixels: int = round(MAX_MEGAPIXELS * 1e6)) -> Flask:
    """The web app around one loaded predictor (shared by all request threads)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes  # larger requests: werkzeug raises 413 unread

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        message = error.description
        if error.code == 413:
            message = upload_too_large(max_upload_bytes)
        return json_response({"error": message}, error.code)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        app.logger.exception("unexpected error")  # the traceback goes to the server's log, never to the client
        return json_response({"error": f"internal error ({type(error).__name__})"}, 500)

    @app.get("/")
    def page() -> Response:
        return Response(PAGE, mimetype="text/html")

    icon = favicon_png()

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(icon, mimetype="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok", "model": predictor.card.get("name", "")})

    @app.post("/predict")
    def predict_photo() -> Response:
        upload = request.files.get("image")
        if upload is None:
            other = ", ".join(f"'{name}'" for name in request.files) or "none"
            return json_response({"error": f"send the photo as a multipart upload in the form field 'image' "
                                           f"(file fields received: {other})"}, 400)
        try:
            min_gender_confidence = float_between(0.0, 1.0)(request.args.get("min_gender_confidence", "0"))
        except argparse.ArgumentTypeError as error:
            return json_response({"error": f"min_gender_confidence: {error}"}, 400)
        filename = upload.filename or "upload"
        try:
            image = decode_upload(upload.read(), filename, max_pixels)
        except UserError as error:
            return json_response({"error": str(error)}, 400)
        faces = [withhold_gender(face, min_gender_confidence) for face in predictor.predict(image)]
        result = {"image": filename, "faces": faces}
        if request.args.get("annotate", "0").lower() in ("1", "true", "yes"):
            ok, jpeg = cv2.imencode(".jpg", annotate(image, result["faces"]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            result["annotated_jpeg"] = base64.b64encode(jpeg.tobytes()).decode("ascii")
        return json_response(result)

    return app


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_http_server(app: Flask, host: str, port: int, threads: int, max_upload_bytes: int
                       ) -> BaseWSGIServer | MultiSocketServer:
    """waitress serving app. It buffers a whole request before Flask sees it, so beyond 4x the upload
    limit it refuses the request itself: with JSON like every other error, not its plain-text page."""
    from waitress import create_server  # here: --help and the tests of create_app do without it
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            message = upload_too_large(max_upload_bytes) if error.code == 413 else f"{error.reason}: {error.body}"
            body = finite_json({"error": message}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JSONErrorChannel(HTTPChannel):
        error_task_class = JSONErrorTask

    listeners: dict = {}  # waitress puts each listening socket's server here
    try:
        server = create_server(app, map=listeners, host=host, port=port, threads=threads,
                               max_request_body_size=4 * max_upload_bytes + 2**20)
    except (OSError, ValueError) as error:  # ValueError: waitress on a malformed host
        raise UserError(f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}") from None
    for listener in listeners.values():
        listener.channel_class = JSONErrorChannel
    return server


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_opencv()
    predictor = AgeGenderPredictor(args.model, args.detector, args.detector_model)
    max_upload_bytes = round(args.max_upload_mb * 2**20)
    app = create_app(predictor, max_upload_bytes, round(args.max_megapixels * 1e6))
    server = create_http_server(app, args.host, args.port, args.threads, max_upload_bytes)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use it", file=sys.stderr)
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    for host, port in listening:
        print(f"serving on http://{f'[{host}]' if ':' in host else host}:{port} (Ctrl+C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.close()
    return 0


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Age and gender</title>
<link rel="icon" href="favicon.ico" type="image/png">
<style>
  body { font-family: system-ui, sans-serif; max-width: 860px; margin: 1.5em auto; padding: 0 1em; color: #222; }
  h1 { font-size: 1.5em; margin-bottom: .3em; }
  #drop { display: block; border: 2px dashed #999; border-radius: 8px; padding: 1.2em; text-align: center; }
  #drop.over { background: #eef3ff; border-color: #36c; }
  #status { min-height: 1.4em; font-weight: 600; }
  #status.error { color: #b00; }
  #annotated { max-width: 100%; max-height: 75vh; display: block; }
  table { border-collapse: collapse; margin-top: .8em; }
  th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: right; }
  .hidden { display: none !important; }
</style>
</head>
<body>
<h1>Age and gender</h1>
<label id="drop">Drop a photo here, or choose one: <input id="file" type="file" accept="image/*"></label>
<p id="status"></p>
<img id="annotated" class="hidden" alt="the photo with a box and a label on each face">
<table id="faces" class="hidden">
  <thead><tr><th>face</th><th>age</th><th>likely range</th><th>gender</th><th>confidence</th>
  <th>box (x, y, w, h)</th></tr></thead>
  <tbody></tbody>
</table>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
const statusLine = document.getElementById("status"), picture = document.getElementById("annotated");
const table = document.getElementById("faces"), rows = table.querySelector("tbody");

async function send(file) {
  statusLine.className = "";
  statusLine.textContent = "Looking at " + file.name + " ...";
  const form = new FormData();
  form.append("image", file);
  try {
    const response = await fetch("predict?annotate=1", {method: "POST", body: form});
    const result = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) throw new Error(result.error || response.statusText);
    show(result);
  } catch (error) {
    statusLine.className = "error";
    statusLine.textContent = error.message;
    picture.classList.add("hidden");
    table.classList.add("hidden");
  }
}

function show(result) {
  const count = result.faces.length;
  statusLine.dataset.faces = count;
  statusLine.textContent = count + (count === 1 ? " face in " : " faces in ") + result.image;
  picture.src = "data:image/jpeg;base64," + result.annotated_jpeg;
  picture.classList.remove("hidden");
  rows.replaceChildren(...result.faces.map(face => {
    const row = document.createElement("tr");
    const cells = [face.index, face.age.toFixed(1), face.age_range.map(Math.round).join("-"), face.gender,
                   face.gender_confidence.toFixed(2), face.box.map(Math.round).join(", ")];
    for (const value of cells) row.insertCell().textContent = value;
    return row;
  }));
  table.classList.toggle("hidden", count === 0);
}

input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); });
drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", event => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) send(event.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""

if __name__ == "__main__":
    run_cli(main)
