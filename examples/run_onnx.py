"""Run an alzmri ONNX export with ONNX Runtime, numpy and Pillow only: nothing from alzmri, TensorFlow or scikit-learn.

    python examples/run_onnx.py model.onnx slice1.jpg slice2.png ...   # prints CSV: file, predicted, one column per class

The export's metadata says how to turn an image into its input: decode with Pillow, convert to RGB (8-bit grayscale
stays one channel until the end), resize bilinear to ``alzmri.input_size`` (width x height) by stretching or by
padding (``alzmri.resize``), replicate gray to 3 channels, stack as uint8 [N, H, W, 3]. That is what alzmri's
decoder does for 8-bit grayscale and RGB slices; everything else (preprocessing, backbone, head) is in the graph.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def fit(im: Image.Image, width: int, height: int, resize: str) -> Image.Image:
    """Resize like alzmri: stretch to the size, or scale to fit and centre on black ("pad")."""
    if resize == "stretch":
        return im.resize((width, height), Image.BILINEAR, reducing_gap=3.0)
    scale = min(width / im.width, height / im.height)
    nw, nh = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = Image.new(im.mode, (width, height))
    canvas.paste(im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0), ((width - nw) // 2, (height - nh) // 2))
    return canvas


def load(path: str, width: int, height: int, resize: str) -> np.ndarray:
    """One image as uint8 [height, width, 3]."""
    with Image.open(path) as im:
        if im.format == "JPEG":  # decode big JPEGs at a reduced scale, as alzmri does
            im.draft(im.mode if im.mode in ("L", "RGB") else None, (width * 2, height * 2))
        im.load()
        if im.mode == "L":
            gray = np.asarray(fit(im, width, height, resize), dtype=np.uint8)
            return np.stack([gray, gray, gray], axis=-1)
        return np.asarray(fit(im.convert("RGB"), width, height, resize), dtype=np.uint8)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    session = ort.InferenceSession(argv[0], providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["alzmri.classes"])
    width, height = (int(v) for v in meta["alzmri.input_size"].split("x"))
    step = int(meta.get("alzmri.batch", "32"))  # a few images per call: memory stays small, and it is faster
    out = csv.writer(sys.stdout)
    out.writerow(["file", "predicted", *[f"p_{c}" for c in classes]])
    for i in range(0, len(argv) - 1, step):
        paths = argv[1 + i:1 + i + step]
        images = np.stack([load(p, width, height, meta["alzmri.resize"]) for p in paths])
        for path, p in zip(paths, session.run(["probabilities"], {"image": images})[0]):
            out.writerow([path, classes[int(np.argmax(p))], *[repr(float(v)) for v in p]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
