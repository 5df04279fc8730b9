"""FaceDet: the faces in an image (SPEC 4), as Objects labelled "face".

Two backends, both small and able to run offline:

- `yunet`: OpenCV's YuNet, a ~230 KB ONNX CNN run by `cv2.FaceDetectorYN`
  (opencv-python-headless, in the `models` extra). It finds faces down to ~10 px, in profile
  and partly hidden, gives a score and five landmarks per face, and takes milliseconds on a
  CPU, so it suits a tool users run locally. Its model file is not inside the OpenCV wheel: it
  is fetched once into visprog's cache folder (from the Hugging Face hub file `hub_repo` /
  `hub_file`, else from `url`) and read from there afterwards, offline. Set `model` to a
  local .onnx path to skip fetching, or to `tiny:yunet` for a tiny random network with
  YuNet's inputs and outputs (built with torch and onnx; the tests run the detection path
  through OpenCV with it).
- `cascade` (the `classic` preset): the LBP frontal-face cascade that ships inside the
  scikit-image wheel, run by `skimage.feature.Cascade`. Nothing to download, so it works
  offline from the start and the tests run it on a real face; it finds upright frontal faces
  only, has no score, and makes more false detections.
  (OpenCV 5 no longer ships its Haar cascades, hence scikit-image's.)
- `auto` (default): YuNet where its model file is present (the configured path, visprog's
  cache, the hub's cache) or can be downloaded once now; otherwise the cascade, with a
  one-line notice on stderr and a note in the trace. The choice is made when the module is
  built, so the settings (and step-cache keys) are those of the backend that runs.

Both run on a copy scaled down to at most `max_side` pixels (boxes are scaled back to
original pixels): detection time grows with the pixel count and faces stay findable.
"""
from __future__ import annotations

import logging
import os
import threading
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from visprog.models import (TINY_PREFIX, Backend, ModelLoadError, ModelTool, cache_dir,
                            resolve_checkpoint, rgb_image)
from visprog.values import Objects, Region

from ._notes import note

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
# Each backend's own settings and their defaults (the chosen backend's join the cache key).
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "yunet": {
        "model": "",  # a local .onnx path; empty: fetched once into the cache folder
        "hub_repo": "opencv/face_detection_yunet",
        "hub_file": YUNET_FILE,
        "url": ("https://github.com/opencv/opencv_zoo/raw/main/models/"
                f"face_detection_yunet/{YUNET_FILE}"),
        "score_threshold": 0.7,
        "nms_threshold": 0.3,
        "top_k": 5000,
        "max_side": 1280,
    },
    "cascade": {
        "cascade": "",  # an OpenCV cascade XML; empty: scikit-image's LBP frontal face one
        "scale_factor": 1.2,
        "step_ratio": 1.0,
        "min_size": 24,
        "min_neighbors": 4,
        "max_side": 512,
    },
}


# -- finding the model files ------------------------------------------------------------------

def yunet_model_path(s: dict[str, Any], *, hub_online: bool = True) -> str:
    """The YuNet .onnx file: the configured path, the cached copy, or a fresh download
    (`hub_online` False: the hub's cache only, then the plain URL, which fails fast offline
    where the hub client retries for tens of seconds).

    Raises:
        ModelLoadError: no local file and it could not be fetched; says where to put it.
    """
    if s["model"].startswith(TINY_PREFIX):
        return str(Path(resolve_checkpoint(s["model"])) / "yunet.onnx")
    if s["model"]:
        path = Path(s["model"]).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"FaceDet: the YuNet model file {str(path)!r} (setting "
                                 f"[FaceDet] model) does not exist", str(path))
        return str(path)
    target = cache_dir() / "models" / s["hub_file"]
    if target.is_file():
        return str(target)
    errors = []
    # read here, not from huggingface_hub's constants, which are fixed when it is imported
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:  # the hub's own cache (a download when online)
        from huggingface_hub import hf_hub_download

        return hf_hub_download(s["hub_repo"], s["hub_file"],
                               local_files_only=offline or not hub_online)
    except Exception as e:  # not installed, offline, not cached, no network
        errors.append(f"hub {s['hub_repo']}/{s['hub_file']}: {type(e).__name__}")
    if s["url"] and not offline:
        try:
            _download(s["url"], target)
            return str(target)
        except Exception as e:
            errors.append(f"{s['url']}: {type(e).__name__}: {e}")
    raise ModelLoadError(
        f"FaceDet: the YuNet face detector model {s['hub_file']!r} is not on this machine and "
        f"could not be fetched ({'; '.join(errors) or 'offline'}).\n  how to fix: download it "
        f"once from {s['url'] or 'the OpenCV model zoo'} and put it at {target}, or set "
        f"[FaceDet] model = \"/path/to/{s['hub_file']}\" in your config, or use "
        f"[FaceDet] backend = \"cascade\" (ships with scikit-image, no download)",
        s["hub_file"])


_AUTO: dict[tuple, str | None] = {}  # YuNet file settings -> its path, or None: unavailable
_AUTO_LOCK = threading.Lock()
log = logging.getLogger("visprog")


def auto_backend(s: dict[str, Any]) -> str:
    """"yunet" when its model file is present or can be fetched now, else "cascade" (with a
    one-line notice, once per process and file). A tiny:yunet model is built offline: yunet."""
    s = {**BACKEND_DEFAULTS["yunet"], **s}
    if s["model"].startswith(TINY_PREFIX):
        return "yunet"
    key = (s["model"], s["hub_repo"], s["hub_file"], s["url"], os.environ.get("HF_HUB_OFFLINE"),
           os.environ.get("VISPROG_CACHE_DIR"))
    with _AUTO_LOCK:  # one fetch attempt per process, not one per build
        if key not in _AUTO:
            try:
                _AUTO[key] = yunet_model_path(s, hub_online=False)
            except ModelLoadError:
                _AUTO[key] = None
                log.warning("visprog: FaceDet: YuNet's model file is not here and could not "
                            "be downloaded; using the offline cascade (see [FaceDet] model)")
    return "yunet" if _AUTO[key] else "cascade"


def _download(url: str, target: Path) -> None:
    """Fetch `url` into `target` atomically (a half-written file is never left there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            tmp.write_bytes(r.read())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def cascade_path(s: dict[str, Any]) -> str:
    if s["cascade"]:
        return str(Path(s["cascade"]).expanduser())
    try:
        from skimage import data
    except ImportError as e:
        raise ModelLoadError("FaceDet: backend 'cascade' needs scikit-image "
                             "(pip install scikit-image)", "cascade") from e
    return data.lbp_frontal_face_cascade_filename()


# -- loaders (bundles the model manager keeps) ------------------------------------------------

def load_yunet(path: str, device: str, dtype: Any) -> dict[str, Any]:
    import cv2

    # input size and thresholds are set before each detect
    det = cv2.FaceDetectorYN.create(path, "", (320, 320))
    return {"detector": det, "lock": threading.Lock()}


def load_cascade(path: str, device: str, dtype: Any) -> dict[str, Any]:
    from skimage.feature import Cascade

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no cascade file at {path}")
    return {"detector": Cascade(path), "lock": threading.Lock()}


# -- detection --------------------------------------------------------------------------------

def _scaled(image: Image.Image, max_side: int) -> tuple[np.ndarray, float]:
    """The image as an RGB array at most `max_side` long, and the scale used."""
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.BILINEAR)
    return np.asarray(image), scale


def detect_yunet(image: Image.Image, bundle: dict[str, Any], s: dict[str, Any]) -> Objects:
    rgb, scale = _scaled(image, s["max_side"])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    with bundle["lock"]:  # the detector keeps the input size as state
        det = bundle["detector"]  # shared by tools with other thresholds: set them each call
        det.setScoreThreshold(float(s["score_threshold"]))
        det.setNMSThreshold(float(s["nms_threshold"]))
        det.setTopK(int(s["top_k"]))
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = det.detect(bgr)
    regions = []
    for f in ([] if faces is None else faces):
        x, y, w, h = (float(v) / scale for v in f[:4])
        landmarks = tuple((float(f[4 + 2 * i]) / scale, float(f[5 + 2 * i]) / scale)
                          for i in range(5))
        regions.append(Region(box=(x, y, x + w, y + h), label="face", score=float(f[14]),
                              extra={"landmarks": landmarks}))
    regions.sort(key=lambda r: -(r.score or 0.0))
    return Objects.from_regions(regions, image.size)


def detect_cascade(image: Image.Image, bundle: dict[str, Any], s: dict[str, Any]) -> Objects:
    rgb, scale = _scaled(image, s["max_side"])
    h, w = rgb.shape[:2]
    size = int(s["min_size"])
    if min(w, h) < size:  # no window fits
        return Objects.empty(image.size)
    with bundle["lock"]:
        found = bundle["detector"].detect_multi_scale(
            img=rgb, scale_factor=float(s["scale_factor"]), step_ratio=float(s["step_ratio"]),
            min_size=(size, size), max_size=(h, w),
            min_neighbor_number=int(s["min_neighbors"]))
    boxes = [(d["c"] / scale, d["r"] / scale, (d["c"] + d["width"]) / scale,
              (d["r"] + d["height"]) / scale) for d in found]
    boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))  # no score: larger first
    return Objects(boxes, image.size, labels=["face"] * len(boxes))


def build_tiny_yunet(folder: Path) -> None:
    """`tiny:yunet`: a random 3-conv network with YuNet's contract, as ONNX: input [1,3,H,W]
    (H, W multiples of 32), and for each stride s in 8, 16, 32 over N = H*W/s^2 anchors the
    outputs cls_s, obj_s [1,N,1], bbox_s [1,N,4] and kps_s [1,N,10], which
    `cv2.FaceDetectorYN` decodes into boxes, landmarks and scores."""
    import torch
    from torch import nn

    class TinyYuNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stride8 = nn.Conv2d(3, 8, 3, stride=8, padding=1)
            self.stride16 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.stride32 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.heads = nn.ModuleList(nn.Conv2d(8, 16, 1) for _ in range(3))

        def forward(self, x: Any) -> tuple:
            f8 = torch.relu(self.stride8(x))
            f16 = torch.relu(self.stride16(f8))
            f32 = torch.relu(self.stride32(f16))
            per_stride = []
            for feature, head in zip((f8, f16, f32), self.heads):
                y = head(feature).flatten(2).transpose(1, 2)  # [1, N, 16]
                per_stride.append((torch.sigmoid(y[:, :, :1]), torch.sigmoid(y[:, :, 1:2]),
                                   y[:, :, 2:6], y[:, :, 6:]))
            return tuple(out[k] for k in range(4) for out in per_stride)

    torch.manual_seed(0)
    names = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)]
    with warnings.catch_warnings():
        # The TorchScript exporter on purpose: torch's newer one needs onnxscript, which
        # visprog does not depend on, and writes the same small graph.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX",
                                DeprecationWarning)
        torch.onnx.export(TinyYuNet().eval(), (torch.zeros(1, 3, 320, 320),),
                          str(folder / "yunet.onnx"), input_names=["input"], output_names=names,
                          dynamo=False, opset_version=13)


# -- the backends ----------------------------------------------------------------------------

class FaceDetector(Backend):
    """What FaceDet's backends share: their own settings (`BACKEND_DEFAULTS[name]`) and a
    detector run on one image at a time."""

    uses_torch = False  # OpenCV and scikit-image
    name: str

    def __init__(self, s: dict[str, Any], fell_back: bool = False):
        # auto ran the cascade because YuNet's file was missing: the first run notes it
        self.fell_back = fell_back
        super().__init__(s)

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        # the other backend's own keys (tiny's model, say) would only change the cache key
        other = {k for b, d in BACKEND_DEFAULTS.items() if b != self.name for k in d}
        other -= set(BACKEND_DEFAULTS[self.name])
        s = {k: v for k, v in s.items() if k not in other} | {"backend": self.name}
        return {"backend": self.name, **BACKEND_DEFAULTS[self.name], **s}

    def forward(self, tool: ModelTool, images: list[Image.Image]) -> list[Objects]:
        # OpenCV and scikit-image detect one image at a time; the batch is a loop.
        if self.fell_back:
            note(tool.ctx, tool.name, "YuNet's model file is not available offline: the "
                 "cascade detector ran instead (backend auto)")
            self.fell_back = False  # once per module
        bundle, detect = self.bundle(tool)
        return [detect(image, bundle, self.settings) for image in images]

    def bundle(self, tool: ModelTool) -> tuple[Any, Any]:
        """The loaded detector and its detect function."""
        raise NotImplementedError


class YuNet(FaceDetector):
    """OpenCV's YuNet: its model file is found (or fetched) when a call first needs it."""

    name = "yunet"

    def bundle(self, tool: ModelTool) -> tuple[Any, Any]:
        return tool.model("yunet", yunet_model_path(self.settings), load_yunet), detect_yunet


class Cascade(FaceDetector):
    """scikit-image's LBP frontal-face cascade: nothing to download."""

    name = "cascade"

    def bundle(self, tool: ModelTool) -> tuple[Any, Any]:
        return (tool.model("face_cascade", cascade_path(self.settings), load_cascade),
                detect_cascade)


def auto(s: dict[str, Any]) -> FaceDetector:
    """"auto": YuNet where its model file is here or can be fetched now, else the cascade
    (noted in the trace once). Decided when the module is built, so the settings (and
    step-cache keys) are those of the backend that runs."""
    if auto_backend(s) == "yunet":
        return YuNet(s)
    return Cascade(s, fell_back=True)


# -- the tool --------------------------------------------------------------------------------

class FaceDet(ModelTool):
    name = "FaceDet"
    tasks = ("imgedit", "knowtag")  # the planner's prompts that describe it
    params = {"image": "Image"}
    returns = "Objects"
    doc = "Finds the faces in the image."
    backends = {"auto": auto, "yunet": YuNet, "cascade": Cascade}
    # With "yunet" (or "auto"): model = "/path/to.onnx" (or "tiny:yunet"), score_threshold,
    # nms_threshold, top_k, max_side.
    presets = {"default": {"backend": "auto"},
               "classic": {"backend": "cascade"},  # today's default, unchanged
               "tiny": {"model": "tiny:yunet", "score_threshold": 0.5}}
    tiny_checkpoints = {"yunet": build_tiny_yunet}
    uses_torch = False  # OpenCV and scikit-image

    @classmethod
    def describe_model(cls, settings: Mapping[str, Any]) -> str:
        if settings.get("backend") == "yunet":
            return settings.get("model") or f"{settings.get('hub_repo')}/{settings.get('hub_file')}"
        if settings.get("backend") == "cascade":
            return settings.get("cascade") or "scikit-image LBP frontal-face cascade"
        return super().describe_model(settings)

    def preprocess(self, call: dict[str, Any]) -> Image.Image:
        return rgb_image(call["image"])


TOOLS = [FaceDet]
