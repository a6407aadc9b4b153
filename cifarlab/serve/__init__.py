"""`cifarlab serve`: a local web page and JSON API over one model (FastAPI + uvicorn, the
`serve` extra). Upload, drop or paste an image, or pick a test image, and see the top-5
classes with their probabilities, the Grad-CAM overlay and the model's card.

    server.py      bind, load, run (the command)
    app.py         the routes and the one-line JSON errors
    classifier.py  the model, loaded once: image → top-5, probabilities, overlay
    images.py      upload bytes → pixels (size and pixel caps), pixels → PNG
    card.py        the model card (eval.json, bench.json, parameters and MACs)
    samples.py     test images to pick, from the run's test split
    text.py        every word the page shows
"""

from .server import serve

__all__ = ["serve"]
