"""`cifarlab serve`: the JSON API answers as `cifarlab predict` does on a briefly trained run
(real CIFAR-10 when present), every bad upload is a 4xx with one line of JSON and leaves the
server healthy, an ONNX model is served without Grad-CAM, bad command lines are one error
line, and the page works in a real browser (headless Chromium, driven by Selenium)."""

from __future__ import annotations

import base64
import io
import json
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from PIL import Image

import cifarlab
from cifarlab.cli import main
from cifarlab.config import resolve
from cifarlab.data import make_splits
from cifarlab.serve.images import MAX_PIXELS
from helpers import real_data_root, write_cifar10
from test_bad_inputs import assert_refused
from test_report import _PageParser, assert_png, chromium

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'cifarlab[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from cifarlab.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return real_data_root() or write_cifar10(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory) -> Path:
    """LeNet after one epoch on 4,000 real training images, its temperature fitted on a
    calibration hold-out, and its latency measured by `cifarlab bench` (bench.json)."""
    out = tmp_path_factory.mktemp("serve") / "run"
    subset = ["data.train_subset=4000", "data.val_size=500", "data.calib_size=500"] if real_data_root() else \
             ["data.val_size=100", "data.calib_size=100"]  # fmt: skip
    config = resolve("tutorial", sets=[f"data.data_dir={data_root}", *subset, "train.batch_size=32", "optim.lr=0.01",
                                       "train.epochs=1", "train.report=false", f"train.out={out}"])  # fmt: skip
    cifarlab.train(config, verbose=False)
    cifarlab.bench([out], calls=20, batches=1)
    return out


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(run), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def test_image(run, tmp_path_factory) -> Path:
    """A test-split image at another size and format (97×61 JPEG), as a user's photo would be."""
    test = make_splits(cifarlab.load_checkpoint(run).config().data).test
    path = tmp_path_factory.mktemp("images") / "photo.jpg"
    Image.fromarray(test.images[7].permute(1, 2, 0).numpy()).resize((97, 61), Image.Resampling.BICUBIC).save(path)
    return path


def post(client: TestClient, data: bytes, name: str = "image.png", field: str = "file"):
    return client.post("/predict", files={field: (name, data, "application/octet-stream")})


def healthy(client: TestClient) -> bool:
    response = client.get("/health")
    return response.status_code == 200 and response.json()["status"] == "ok"


def test_health_says_what_is_served(client, run):
    assert client.get("/health").json() == {"status": "ok", "model": "lenet", "source": str(run), "runtime": "PyTorch",
                                            "precision": "fp32", "calibrated": True, "gradcam": True}  # fmt: skip


def test_predict_answers_as_cifarlab_predict_does(client, run, test_image, capsys):
    response = post(client, test_image.read_bytes(), "photo.jpg")
    assert response.status_code == 200
    answer = response.json()
    top = [(row["class"], row["probability"]) for row in answer["top"]]
    probabilities = [p for _, p in top]
    assert len(top) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 and sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-9)
    assert all(answer["probabilities"][name] == p for name, p in top)
    # the same numbers as the library and the command line, for the same file
    assert top == cifarlab.classify_images(run, [test_image], top_k=5)[0]
    assert main(["predict", str(run), str(test_image), "--top-k", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"{test_image}: " + ", ".join(f"{c} {p:.1%}" for c, p in top)
    # calibrated with the run's temperature; Grad-CAM of the top class as a PNG
    temperature = json.loads((run / "checkpoints" / "best" / "calibration.json").read_text())["temperature"]
    assert answer["calibrated"] is True and answer["temperature"] == temperature
    assert answer["gradcam"]["class"] == top[0][0] and answer["no_gradcam"] is None
    for key in ("overlay", "input"):
        assert answer[key].startswith("data:image/png;base64,")
        image = assert_png(base64.b64decode(answer[key].split(",", 1)[1]))
        assert image.size == (256, 256)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming width×height grey pixels, and one compressed row: a few
    hundred bytes that would decode to gigabytes (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))  # fmt: skip


def a_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_UPLOADS = {
    # id: (request keywords for TestClient.post, status, words in the error)
    "not-an-image": (lambda: {"files": {"file": ("a.png", b"hello, I am text", "image/png")}}, 415, "not an image"),
    "truncated": (lambda: {"files": {"file": ("a.png", a_png()[:60], "image/png")}}, 422, "cannot be decoded"),
    "empty": (lambda: {"files": {"file": ("a.png", b"", "image/png")}}, 400, "the file is empty"),
    "wrong-field": (lambda: {"files": {"image": ("a.png", a_png(), "image/png")}}, 400, "no field 'file'"),
    "text-field": (lambda: {"data": {"file": "a.png"}}, 400, "holds text, not a file"),
    "not-multipart": (lambda: {"content": a_png(), "headers": {"content-type": "image/png"}}, 400, "no field 'file'"),
    "broken-multipart": (lambda: {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data"}},
                         400, "not a valid multipart/form-data upload"),
    "too-big": (lambda: {"files": {"file": ("a.png", b"\0" * (11 * 2**20), "image/png")}}, 413, "larger than 10 MB"),
    "too-big-unannounced": (lambda: {"content": (b"\0" * 2**20 for _ in range(11)),  # chunked: no content-length
                                     "headers": {"content-type": "multipart/form-data; boundary=x"}}, 413, "larger than"),
    "bomb": (lambda: {"files": {"file": ("bomb.png", png_claiming(100_000, 100_000), "image/png")}}, 413, "too large"),
    "bomb-under-pillows-own-refusal": (lambda: {"files": {"file": ("b.png", png_claiming(8_000, 8_000), "image/png")}},
                                       413, f"more than the {MAX_PIXELS:,} allowed"),
    "eps": (lambda: {"files": {"file": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x")}},
            415, "not an image in a format this app reads"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_bad_upload_is_a_4xx_with_one_line_of_json_and_the_server_stays_healthy(client, kind):
    request, status, words = BAD_UPLOADS[kind]
    started = time.perf_counter()
    response = client.post("/predict", **request())
    assert response.status_code == status, response.text
    assert "\n" not in response.text and list(response.json()) == ["error"]
    assert words in response.json()["error"]
    assert time.perf_counter() - started < 10  # a bomb is refused from its header, not decoded
    assert healthy(client)


def test_other_requests_get_json_errors_too(client):
    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/predict", 405), ("GET", "/samples/99.png", 404),
                                 ("GET", "/samples/x.png", 404)):  # fmt: skip
        response = client.request(method, path)
        assert response.status_code == status and list(response.json()) == ["error"] and "\n" not in response.text


def test_page_shows_the_card_the_samples_and_nothing_from_elsewhere(client, run):
    page = _PageParser()
    page.feed(client.get("/").text)
    assert page.external == [] or all(tag == "script" and not attrs for tag, attrs in page.external)  # inline only
    result = json.loads((run / "eval.json").read_text())
    bench = json.loads((run / "bench.json").read_text())["rows"][0]
    assert page.numbers["accuracy"] == result["accuracy"]
    assert page.numbers["latency_ms_p50"] == bench["latency_ms_p50"] and page.numbers["params"] == bench["params"]
    for name, figures in result["per_class"].items():
        assert page.numbers[f"per_class/{name}/accuracy"] == figures["accuracy"]
    # one test image per class, served as the PNG it is in the test split
    samples = [img for img in page.images if img.get("src", "").startswith("samples/")]
    assert sorted(img["alt"] for img in samples) == sorted(result["per_class"])
    picked = client.get(f"/{samples[0]['src']}")
    assert picked.headers["content-type"] == "image/png" and Image.open(io.BytesIO(picked.content)).size == (32, 32)
    assert post(client, picked.content).status_code == 200


def test_an_onnx_export_is_served_without_grad_cam(run, test_image, tmp_path):
    exported = cifarlab.export_model(run, "onnx", tmp_path / "run.onnx").path
    client = TestClient(create_app(exported), raise_server_exceptions=False)
    health = client.get("/health").json()
    assert health["runtime"] == "ONNX Runtime" and health["gradcam"] is False
    answer = post(client, test_image.read_bytes()).json()
    assert answer["overlay"] is None and "No Grad-CAM: this is an ONNX model" in answer["no_gradcam"]
    expected = cifarlab.classify_images(run, [test_image], top_k=5, raw=True)[0]  # an export carries no temperature
    assert [row["class"] for row in answer["top"]] == [c for c, _ in expected] and answer["calibrated"] is False
    assert [row["probability"] for row in answer["top"]] == pytest.approx([p for _, p in expected], abs=1e-5)
    page = client.get("/").text
    assert "No Grad-CAM: this is an ONNX model" in page and "No test result" in page


@pytest.mark.slow
def test_command_line_refusals_are_one_line(run, tmp_path):
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    assert_refused(["serve", tmp_path / "unfinished", "--port", "0"], tmp_path, "has no checkpoint yet")
    assert_refused(["serve", tmp_path / "nowhere", "--port", "0"], tmp_path, "'" + str(tmp_path / "nowhere") + "' does not exist")
    assert_refused(["serve", run, "--port", "70000"], tmp_path, "--port must be between 0 and 65535 (got 70000)")
    assert_refused(["serve", run, "--port", "http"], tmp_path, "argument --port: invalid int value: 'http'")
    assert_refused(["serve", run, "--host", "no-such-host.invalid"], tmp_path, "is not an address this machine can listen on")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_refused(["serve", run, "--port", port], tmp_path, f"cannot listen on 127.0.0.1:{port}: Address already in use")


# ------------------------------------------------------------------------------ in a real browser
def chromedriver() -> str | None:
    return shutil.which("chromedriver")


class Server:
    """`cifarlab serve RUN --port 0` in a subprocess; its URL read from the line it prints."""

    def __init__(self, run: Path, *extra: str):
        self.process = subprocess.Popen([sys.executable, "-m", "cifarlab", "serve", str(run), "--port", "0", *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=180):
            self.stop()
            raise AssertionError("cifarlab serve printed no URL within 180 s")
        line = self.process.stdout.readline()
        assert line.startswith("serving "), line + self.process.stderr.read()
        self.url = line.split(" on ")[1].split()[0]

    def stop(self) -> tuple[int, str]:
        """Ctrl+C, as a user stops it; its exit status and what it wrote on stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return self.process.returncode, stderr


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None or chromedriver() is None,
                    reason="chromium or chromedriver is not installed (`apt-get install chromium chromium-driver`; "
                           ".ci/run installs them)")  # fmt: skip
def test_the_page_in_chromium(run, test_image, tmp_path):
    """Upload an image through the file input; the top-5 bars and the Grad-CAM overlay appear,
    with the numbers POST /predict gives for that file; a picked test image works too."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(run)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2300", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver()), options=options)
    try:
        browser.get(server.url)
        assert browser.find_element(By.ID, "result").get_attribute("data-state") == "empty"
        browser.find_element(By.ID, "file").send_keys(str(test_image))
        shown = _wait_for_answer(browser, WebDriverWait)
        with urllib.request.urlopen(urllib.request.Request(
                server.url + "predict", data=_multipart(test_image.read_bytes()),
                headers={"Content-Type": "multipart/form-data; boundary=cifarlab"})) as response:  # fmt: skip
            answer = json.load(response)
        assert shown == [(row["class"], row["probability"]) for row in answer["top"]]
        caption = browser.find_element(By.ID, "overlay-caption").text
        assert answer["top"][0]["class"] in caption and "Grad-CAM" in caption
        browser.save_screenshot(str(tmp_path / "serve.png"))
        image = assert_png(tmp_path / "serve.png")
        assert image.size[0] >= 1000
        # a test image picked on the page goes through the same path
        browser.find_element(By.CSS_SELECTOR, ".sample").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "preview").get_attribute("src") != "")
        assert len(_wait_for_answer(browser, WebDriverWait)) == 5
    finally:
        browser.quit()
        status, stderr = server.stop()
    assert status == 0 and "Traceback" not in stderr, stderr


def _wait_for_answer(browser, wait) -> list[tuple[str, float]]:
    """The (class, probability) bars once the answer and its overlay image are drawn."""
    from selenium.webdriver.common.by import By

    wait(browser, 120).until(lambda b: b.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.ID, "result").get_attribute("data-state") == "done", \
        browser.find_element(By.ID, "status").text  # fmt: skip
    wait(browser, 30).until(lambda b: b.execute_script(
        "const o = document.getElementById('overlay'); return o.complete && o.naturalWidth > 0"))  # fmt: skip
    rows = browser.find_elements(By.CSS_SELECTOR, "#top5 li")
    return [(row.get_attribute("data-class"), float(row.get_attribute("data-probability"))) for row in rows]


def _multipart(data: bytes) -> bytes:
    return (b'--cifarlab\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--cifarlab--\r\n")  # fmt: skip
