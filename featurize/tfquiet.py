"""Import TensorFlow without its C++ start-up chatter (oneDNN, CUDA probing) on the user's terminal."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any


def import_tensorflow() -> Any:
    """Import TensorFlow and initialise its devices with file descriptor 2 captured.

    The captured text is replayed only if the import fails, so real errors still show.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf
