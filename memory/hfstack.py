"""One lock for importing the Hugging Face stack (transformers, sentence-transformers,
peft) inside the app's process. transformers installs a lazy module in `sys.modules`
while its package initialises; a second thread that runs `from transformers import X`
during that window gets "cannot import name X" instead of waiting. The app imports
it from several threads at once (the warm-up thread loads the embedder while the
tuning job materialises an HF base), so every in-process import of the stack goes
through `hf_imports()`. It also makes the stack offline before anything loads."""

from __future__ import annotations

import contextlib
import os
import threading

_lock = threading.RLock()


@contextlib.contextmanager
def hf_imports():
    """Hold the import lock while importing (and first touching) the HF stack."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _lock:
        # The package itself is imported here, fully, before the caller's
        # `from transformers import ...` resolves its lazy attributes.
        import transformers  # noqa: F401

        yield
