"""Load on `cifarlab serve`: real CIFAR-10 test images posted at a fixed concurrency, with
malformed uploads mixed in, against a server already running on this machine. Prints JSON.

    cifarlab serve runs/fast --port 8000 &          # in another terminal, or in the background
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--requests 2000] [--concurrency 16]
                                    [--malformed 50] [--images 500] [--data-dir DIR]

Each of the `--concurrency` worker threads keeps one HTTP/1.1 connection open (http.client,
so the client adds little of its own) and posts PNGs of the first `--images` test images in
turn, each request the page's own POST /predict (top-5 and Grad-CAM overlay). Latency: from
sending a request to having read its whole answer, p50 and p99 over the good requests;
throughput: good requests answered 200 per second of the whole run's wall time. An error is
a good request not answered 200, or a broken connection. The `--malformed` bad uploads (not
an image, truncated, empty, wrong field, not multipart, broken multipart) are spread evenly
through the run; each must be answered 4xx with a JSON {"error": ...}. GET /health comes last.

The client shares the CPU with the server when both run here: say so beside the figures.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from cifarlab.data import load_split
from cifarlab.engine.runtime import hardware

BOUNDARY = "cifarlab-load"


def multipart(data: bytes, field: str = "file") -> tuple[bytes, str]:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="image.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def real_pngs(count: int, data_dir: str | None) -> list[bytes]:
    test = load_split("cifar10", "test", data_dir, download=False)
    pngs = []
    for image in test.images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def malformed(png: bytes) -> list[tuple[str, bytes, str]]:
    """(kind, body, content type) of each bad upload the run mixes in."""
    return [
        ("not-an-image", *multipart(b"this is text, not a picture")),
        ("truncated", *multipart(png[: len(png) // 3])),
        ("empty", *multipart(b"")),
        ("wrong-field", *multipart(png, field="image")),
        ("not-multipart", png, "image/png"),
        ("broken-multipart", b"--x\r\nnonsense", "multipart/form-data"),
    ]


class Client:
    """One keep-alive connection per worker thread. A kept-alive connection the server has
    meanwhile closed fails before any answer: the request is sent again once on a new one,
    as urllib3 does; a new connection that fails is an error."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        """(status, parsed JSON or None, seconds); status 0 when the connection failed."""
        headers = {"Content-Type": content_type} if content_type else {}
        while True:
            connection = getattr(self.local, "connection", None)
            reused = connection is not None
            if not reused:
                connection = self.local.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                self.local.connection = None
                if reused:
                    continue
                return 0, {"exception": f"{type(e).__name__}: {e}"}, time.perf_counter() - started
            seconds = time.perf_counter() - started
            try:
                return response.status, json.loads(data), seconds
            except ValueError:
                return response.status, None, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="where `cifarlab serve` listens")
    parser.add_argument("--requests", type=int, default=2000, help="good requests (real test images)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--malformed", type=int, default=50, help="bad uploads spread through the run")
    parser.add_argument("--images", type=int, default=500, help="distinct test images to cycle through")
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: $CIFARLAB_DATA, ...)")
    args = parser.parse_args()

    client = Client(args.url)
    status, health, _ = client.request("GET", "/health")
    if status != 200:
        raise SystemExit(f"error: no cifarlab serve answers at {args.url}/health (status {status}); start one first")
    pngs = real_pngs(args.images, args.data_dir)
    bad = malformed(pngs[0])
    jobs = [("good", *multipart(pngs[i % len(pngs)])) for i in range(args.requests)]
    every = max(1, len(jobs) // max(1, args.malformed))
    for n in range(args.malformed):  # evenly spread, the kinds in turn
        jobs.insert(min(len(jobs), (n + 1) * every + n), bad[n % len(bad)])

    def send(job):
        kind, body, content_type = job
        return (kind, *client.request("POST", "/predict", body, content_type))

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(send, jobs))
    wall = time.perf_counter() - started

    good = [(status, answer, seconds) for kind, status, answer, seconds in answers if kind == "good"]
    ok_seconds = [seconds for status, _, seconds in good if status == 200]
    failures = collections.Counter(str(answer) if status == 0 else f"{status} {answer}" for status, answer, _ in good
                                   if status != 200)  # fmt: skip
    ms = np.asarray(ok_seconds) * 1000 if ok_seconds else np.asarray([np.nan])
    refused = [(kind, status, answer) for kind, status, answer, _ in answers if kind != "good"]
    unexpected = [{"kind": kind, "status": status, "answer": answer} for kind, status, answer in refused
                  if not (400 <= status < 500 and isinstance(answer, dict) and list(answer) == ["error"])]  # fmt: skip
    health_status, health_after, _ = client.request("GET", "/health")
    print(json.dumps({
        "url": args.url,
        "model": health.get("model"),
        "runtime": f"{health.get('runtime')} {health.get('precision')}",
        "requests": len(good),
        "concurrency": args.concurrency,
        "ok": len(ok_seconds),
        "errors": len(good) - len(ok_seconds),
        "error_kinds": dict(failures.most_common(5)),
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "throughput_per_s": len(ok_seconds) / wall,
        "wall_s": wall,
        "malformed": {"sent": len(refused), "answered_4xx_json": len(refused) - len(unexpected), "unexpected": unexpected},
        "health_after": {"status": health_status, "answer": health_after},
        "client_hardware": hardware(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
