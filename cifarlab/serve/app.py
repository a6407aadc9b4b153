"""The web app over one loaded model (FastAPI): the page, POST /predict, GET /health and the
sample test images. Every refused request gets a 4xx and one line of JSON, {"error": "..."};
nothing a client sends reaches a traceback.

The upload is read here with its size capped while it arrives (a client may not say how
big it is, or lie), then parsed as multipart; decoding and the model run in worker threads,
so a slow image never blocks the server's event loop.
"""

from __future__ import annotations

import json
import warnings
from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from .. import __version__
from ..errors import first_line
from ..viz import page
from .card import card_html, probabilities_note
from .classifier import Classifier
from .images import FORMATS, MAX_PIXELS, MAX_UPLOAD_BYTES, UploadError, decode_upload
from .samples import Sample, pick_samples
from .text import EN

TEMPLATE = Path(__file__).parent / "templates" / "page.html"
FIELD = "file"  # the multipart field POST /predict reads


def create_app(source: str | Path, data_dir: str | None = None, device: str = "auto") -> FastAPI:
    """Load the model (once) and its card and samples, and route requests to them."""
    # Pillow's own bomb check at the app's limit: it refuses twice that in Image.open and only warns
    # above it, where decode_upload refuses exactly; the warning would be noise in the server's log.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    classifier = Classifier(source, device)
    samples, no_samples = pick_samples(classifier.checkpoint, data_dir)
    html = _page(classifier, samples, no_samples)
    app = FastAPI(title="cifarlab serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": classifier.checkpoint.meta["model"], "source": str(classifier.source),
                "runtime": classifier.runtime, "precision": classifier.precision,
                "calibrated": classifier.checkpoint.temperature is not None, "gradcam": classifier.no_gradcam is None}  # fmt: skip

    @app.get("/samples/{name}")
    def sample(name: str) -> Response:
        index = name.removesuffix(".png")
        if not (index.isdigit() and int(index) < len(samples)):
            raise HTTPException(404, f"no sample image '{name}' (there are {len(samples)}: 0.png to {len(samples) - 1}.png)")
        return Response(samples[int(index)].png, media_type="image/png")

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        data = await _uploaded_file(request)
        image = await run_in_threadpool(decode_upload, data, classifier.size)
        return await run_in_threadpool(classifier.classify, image)

    @app.exception_handler(UploadError)
    async def refused(request: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:  # 404, 405, a malformed multipart body
        return JSONResponse({"error": f"{e.detail} ({request.method} {request.url.path})"}, status_code=e.status_code,
                            headers=e.headers)  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(e).split())}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:  # a bug of ours: still one line of JSON
        return JSONResponse({"error": f"internal error ({type(e).__name__}: {first_line(e)})"}, status_code=500)

    return app


async def _uploaded_file(request: Request) -> bytes:
    """The bytes of the multipart field `file`, or an UploadError (400 no such field, 413 too big)."""
    limit = MAX_UPLOAD_BYTES + 64 * 1024  # the file plus the multipart headers around it
    declared = request.headers.get("content-length", "")
    too_big = UploadError(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        body.append(chunk)

    async def replay() -> dict:
        return {"type": "http.request", "body": b"".join(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except (HTTPException, MultiPartException) as e:  # a malformed multipart body
        raise UploadError(400, f"not a valid multipart/form-data upload: {getattr(e, 'detail', e)}") from None
    try:
        upload = form.get(FIELD)
        if upload is None:
            fields = ", ".join(f"'{k}'" for k in form.keys()) or "none"
            raise UploadError(400, f"no field '{FIELD}' in the upload (fields: {fields}); send the image as the "
                                   f"multipart/form-data field '{FIELD}'")  # fmt: skip
        if not isinstance(upload, UploadFile):
            raise UploadError(400, f"the field '{FIELD}' holds text, not a file; send the image as a file")
        return await upload.read()
    finally:
        await form.close()


def _page(classifier: Classifier, samples: list[Sample], no_samples: str | None) -> str:
    checkpoint, name = classifier.checkpoint, classifier.source.name
    text = {key: escape(value) for key, value in EN.items() if not key.startswith("js_")}
    text.update(
        page_title=escape(EN["page_title"].format(name=name)),
        serving=escape(EN["serving"].format(name=name, model=checkpoint.meta["model"], size=classifier.size,
                                            runtime=f"{classifier.runtime} {classifier.precision}")),  # fmt: skip
        formats=escape(EN["formats"].format(megabytes=MAX_UPLOAD_BYTES // 2**20, megapixels=MAX_PIXELS // 10**6)),
        no_samples=page.note(EN["no_samples"].format(reason=no_samples)) if no_samples else "",
        model_input=escape(EN["model_input"].format(size=classifier.size)),
        probabilities_note=escape(probabilities_note(classifier)),
        gradcam_note=page.note(classifier.no_gradcam) if classifier.no_gradcam else "",
        accept=",".join(f"image/{f.lower()}" for f in FORMATS),
        samples="".join(f'<button type="button" class="sample" data-index="{i}" data-label="{escape(s.label)}">'
                        f'<img src="samples/{i}.png" alt="{escape(s.label)}"><span>{escape(s.label)}</span></button>'
                        for i, s in enumerate(samples)),  # fmt: skip
        card=card_html(classifier),
        script_text=json.dumps({k: v for k, v in EN.items() if k.startswith("js_")}).replace("</", "<\\/"),
    )
    return page.render_document(TEMPLATE, **text)
