"""tf.data input pipeline and the compiled, batched forward pass."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from featurize.images import ImageError, load_rgb


def image_dataset(paths: Sequence[str], size: tuple[int, int], resize: str, batch_size: int,
                  parallel: int | None = None) -> Any:
    """Batches of (uint8 images [B,H,W,3], error strings [B]) in input order, decoded in parallel and prefetched.

    Decoding goes through Pillow so that every format (16-bit, palette, CMYK, TIFF) and every broken file
    is handled the same way; a file that fails yields a black image and its reason instead of stopping the run.
    """
    import tensorflow as tf

    w, h = size

    def decode(path: bytes) -> tuple[np.ndarray, bytes]:
        try:
            return load_rgb(path.decode(), size, resize), b""
        except ImageError as exc:
            return np.zeros((h, w, 3), np.uint8), str(exc).encode()

    def tf_decode(path: Any) -> tuple[Any, Any]:
        img, err = tf.numpy_function(decode, [path], [tf.uint8, tf.string], stateful=False)
        img.set_shape((h, w, 3))
        err.set_shape(())
        return img, err

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(list(paths), dtype=object).astype(str))
    ds = ds.map(tf_decode, num_parallel_calls=parallel or tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_forward(model: Any, preprocess: Callable[[Any], Any], batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass on uint8 batches. Short batches are padded to ``batch_size`` so one trace serves all."""
    import tensorflow as tf

    h, w = int(model.input_shape[1]), int(model.input_shape[2])

    @tf.function(input_signature=[tf.TensorSpec((batch_size, h, w, 3), tf.uint8)])
    def forward(x: Any) -> Any:
        return model(preprocess(tf.cast(x, tf.float32)), training=False)

    def run(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, h, w, 3), np.uint8)])
        return forward(tf.constant(batch)).numpy()[:n].astype(np.float32, copy=False)

    return run
