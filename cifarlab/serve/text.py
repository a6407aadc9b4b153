"""Every word the page shows, in one place: a translation (a Chinese one is planned) is another
dict with the same keys. `{name}` marks a value the server fills in; the page's script reads
the `js_` entries. The JSON API's error lines stay in English, beside the checks that raise them."""

from __future__ import annotations

EN = {
    "lang": "en",
    "page_title": "cifarlab serve: {name}",
    "heading": "What does the model see?",
    "serving": "Serving {name}: {model}, {runtime}, images resized to {size}×{size} pixels.",
    "try_heading": "Try an image",
    "drop_hint": "Drop an image here, paste one (Ctrl+V), or choose a file:",
    "formats": "PNG, JPEG, GIF, BMP or WebP; at most {megabytes} MB and {megapixels} megapixels.",
    "samples_heading": "Or pick a test image",
    "samples_caption": "The first test image of each class from the run's test split; its true class is below it.",
    "no_samples": "No test images to pick from: {reason}",
    "result_heading": "What the model says",
    "your_image": "your image",
    "model_input": "what the model sees ({size}×{size})",
    "top5_heading": "Top-5 classes",
    "calibrated": "Calibrated probabilities: the logits are divided by a temperature of {temperature:.3f}, fitted "
                  "on held-out images (never the test set), so that 70% means right about 70% of the time.",
    "raw": "Raw softmax probabilities: no temperature was fitted for this model (`cifarlab calibrate RUN` fits "
           "one), so they may be over- or under-confident.",
    "no_gradcam_onnx": "No Grad-CAM: this is an ONNX model (int8 or exported), which ONNX Runtime runs without the "
                       "gradients Grad-CAM needs. Serve the run it came from to see where the model looks.",
    "card_heading": "Model card",
    "card_accuracy": "test accuracy",
    "card_params": "parameters",
    "card_macs": "MMACs per image",
    "card_latency": "latency p50 (ms, batch 1)",
    "card_throughput": "images/s (batch 256)",
    "card_per_class": "Test accuracy per class",
    "card_class": "class",
    "card_images": "test images",
    "card_tested": "Tested once on {images:,} test images (test-time augmentation: {tta}); the probabilities "
                   "above use no augmentation, as `cifarlab predict` does.",
    "card_untested": "No test result: an exported file or an unfinished run carries none (`cifarlab bench {source}` "
                     "tests it).",
    "card_bench": "Latency and throughput measured by `cifarlab bench` on {cpu}, {threads} thread(s).",
    "card_no_bench": "No latency measured yet: `cifarlab bench {source}` measures it.",
    "api_heading": "The same as JSON",
    "api_caption": "POST an image as the multipart field `file`; GET /health says whether the server is up.",
    "js_working": "Classifying…",
    "js_refused": "Refused: ",
    "js_failed": "The server did not answer: ",
    "js_overlay": "Grad-CAM for “{class}”",
    "js_gradcam_caption": "Red marks the regions whose features raised the score of “{class}” most (layer {layer}; "
                          "as coarse as that layer's feature map).",
}
