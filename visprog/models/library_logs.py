"""What the libraries under the model modules print that a visprog user can do nothing about,
moved from stderr to visprog's own log at INFO (`visprog -v` shows it).

Only what a user must act on reaches stderr. These messages are about choices visprog makes
on purpose or about the libraries' own internals, never about the user's setup; each is
matched narrowly, so any other message of the same library still shows. Where visprog's own
code caused a warning it was changed instead (the planner's key-value cache, see
`planning/llm_local.py`).
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Iterator

log = logging.getLogger("visprog")

# (the library logger that says it, what it says, why no user can act on it)
UNACTIONABLE: tuple[tuple[str, str, str], ...] = (
    ("transformers.utils.import_utils",
     r"requires torchvision \(not installed\); falling back to `\w+Pil`",
     "visprog runs without torchvision on purpose, with the PIL image processors "
     "(diffusers' pipelines import the torchvision ones by name)"),
    ("transformers.configuration_utils",
     r"Model config: (bos|eos)_token_id must be `None` or an integer within the vocabulary "
     r"\(between 0 and 31999\), got 4940[67]\b",
     "Siglip2TextConfig's own defaults (a 32000-token vocabulary, CLIP's token ids 49406 "
     "and 49407) disagree; transformers builds a default one whenever it prints a config"),
    ("diffusers.models.modeling_utils",
     r"There are modules in \w+ that should be kept in float32: \[\]",
     "the inpainting pipeline's own VAE upcast; the list of modules it warns about is empty"),
)


class _ToVerboseLog(logging.Filter):
    """Drops a library record that matches, and says it on visprog's log at INFO."""

    def __init__(self, library: str, pattern: str):
        super().__init__()
        self.library = library
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.pattern.search(message):
            log.info("visprog: (%s) %s", self.library, message)
            return False
        return True


_ROUTED = False
_LOCK = threading.Lock()


def route_library_logs() -> None:
    """Install the filters on the libraries' loggers (once per process; the loggers need
    not exist yet: a library's `getLogger(__name__)` returns the same object later)."""
    global _ROUTED
    with _LOCK:
        if _ROUTED:
            return
        for name, pattern, _why in UNACTIONABLE:
            logging.getLogger(name).addFilter(_ToVerboseLog(name.split(".")[0], pattern))
        _ROUTED = True


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Within: OpenCV's own log (written by its C++ core to stderr) shows errors only, unless
    visprog's log is verbose. Why: `cv2.FaceDetectorYN.create` always sets a target, and
    OpenCV 5's graph engine warns that it ignores targets, with no way to ask for none."""
    import cv2

    if log.isEnabledFor(logging.INFO):
        yield
        return
    opencv_log = cv2.utils.logging
    previous = opencv_log.getLogLevel()
    opencv_log.setLogLevel(opencv_log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        opencv_log.setLogLevel(previous)
