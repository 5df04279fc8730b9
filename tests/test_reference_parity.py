"""Reference parity: each model module's own pre- and post-processing against the library's
(issue 19 item 4).

Random tiny weights can't show a semantic mistake (a wrong normalisation, box format,
threshold, chat template, depth direction, channel order), but the library's own processors,
pipelines and `post_process_*` functions, run on the same real photo and on the SAME raw
outputs of the same tiny model, must give what the module gives. The raw outputs are taken
from the module's own call (a forward hook on the model class, `captured`), so the
comparison is of processing only; where a module calls `generate`, the library's documented
generation path runs beside it on the same checkpoint. Where the library's processor needs
torchvision (absent here), an independent implementation of the published transform stands
in (SAM 3, as in tests/test_sam3_presets.py). Each test states its tolerance.

These tests fail if the project's processing drifts from the library's, in either
direction (a refactor here or a library upgrade there).
"""
from __future__ import annotations

import ast
import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from visprog.config import load_config  # noqa: E402
from visprog.models import ModelManager, resolve_checkpoint  # noqa: E402
from visprog.config import find_modules  # noqa: E402
from visprog.models import ToolContext  # noqa: E402

build_module = find_modules(plugins=False).build
from visprog.values import Objects, Region  # noqa: E402

TINY = load_config("tiny")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def photos() -> list[Image.Image]:
    """The examples' photo, and a non-square cut of it (aspect ratios and padding matter)."""
    photo = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    return [photo, photo.crop((37, 0, 512, 361))]  # 512x512 and 475x361


def tool(name: str, **settings: Any):
    """The module `name` on the tiny preset, with `settings` over it, on a fresh CPU manager."""
    return build_module(name, {name: {**TINY[name], **settings}},
                        ToolContext(ModelManager(device="cpu")))


def folder(checkpoint: str) -> str:
    return resolve_checkpoint(checkpoint)


@contextlib.contextmanager
def captured(class_name: str):
    """Every forward of a model of class `class_name` while inside: (its arguments, its
    output); keyword arguments by name, positional ones as arg0, arg1...  Only watched:
    the model runs as it would."""
    calls: list[tuple[dict[str, Any], Any]] = []

    def hook(module, args, kwargs, output):
        if type(module).__name__ == class_name:
            calls.append((dict(kwargs, **{f"arg{i}": a for i, a in enumerate(args)}), output))

    handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


# -- Loc: MM-GroundingDINO (default) and GroundingDINO (classic) ----------------------------------

@pytest.mark.parametrize("backend, model_class", [
    ("mm_grounding_dino", "MMGroundingDinoForObjectDetection"),
    ("grounding_dino", "GroundingDinoForObjectDetection")])
def test_loc_equals_the_librarys_grounded_detection(backend, model_class):
    """Per image and query, the processor's inputs for the model card's prompt (lower case,
    ended by ' .') equal the module's, in a batch of two queries too (each row, its padding
    aside, as the query alone: a batch of texts without a '.' would be merged by the
    processor into ONE prompt); and `post_process_grounded_object_detection` on the module's
    raw outputs at the image's size gives the module's boxes, clipped to the image, best
    first (NMS off here), to 1e-4 px, and its scores."""
    loc = tool("Loc", backend=backend, nms_iou=1.0, max_detections=1000)
    s = loc.settings
    processor = transformers.GroundingDinoProcessor.from_pretrained(folder(s["checkpoint"]))
    single, other = photos()
    batches = [[(other, "A Red car."), (other, "person")]]  # one size: one model batch
    if backend == "mm_grounding_dino":  # the default: the square photo alone too
        batches.append([(single, "person")])
    for batch in batches:
        with captured(model_class) as calls:
            got = loc.batch_fn([{"image": im, "object": q} for im, q in batch])
        (kwargs, out), = calls
        assert len(kwargs["input_ids"]) == len(batch)
        for row, ((image, query), found) in enumerate(zip(batch, got)):
            ref_in = processor(images=image, text=query.lower().rstrip(".") + " .",
                               return_tensors="pt")
            assert torch.equal(kwargs["pixel_values"][row], ref_in["pixel_values"][0])
            assert torch.equal(kwargs["pixel_mask"][row], ref_in["pixel_mask"][0])
            mask = kwargs["attention_mask"][row].bool()
            for key in ("input_ids", "token_type_ids"):
                assert torch.equal(kwargs[key][row][mask], ref_in[key][0]), key
            raw = SimpleNamespace(logits=out.logits[row:row + 1],
                                  pred_boxes=out.pred_boxes[row:row + 1])
            ref = processor.post_process_grounded_object_detection(
                raw, kwargs["input_ids"][row:row + 1], threshold=s["box_threshold"],
                text_threshold=s["text_threshold"], target_sizes=[image.size[::-1]])[0]
            w, h = image.size
            boxes = ref["boxes"].numpy().astype(np.float64)
            boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                              boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            order = np.argsort(-ref["scores"].numpy()[keep], kind="stable")
            assert len(found) == keep.sum() > 0
            assert np.abs(found.boxes - boxes[keep][order]).max() < 1e-4
            assert np.allclose(found.scores, ref["scores"].numpy()[keep][order], atol=1e-7)
            assert set(found.labels) == {query.strip()}


# -- Select: SAM 3 (default) --------------------------------------------------------------------

def library_method(module: str, cls: str, method: str, helpers: tuple[str, ...] = ()):
    """A pure-torch method of a library class whose module can't be imported here (it
    imports torchvision first thing): compiled from the installed source as a plain
    function, so what runs is the library's own code. With torchvision, the class itself."""
    try:
        return getattr(getattr(__import__(module, fromlist=[cls]), cls), method)
    except ImportError:
        pass
    import importlib.util

    source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    tree = ast.parse(source)
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in helpers]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            wanted += [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method]
    assert len(wanted) == len(helpers) + 1, f"{module}: {cls}.{method} or {helpers} not found"
    for n in wanted:
        n.decorator_list = []
    env = {"torch": torch, "F": torch.nn.functional, "np": np}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), module, "exec"), env)
    return env[method]


def sam3_pil_processor():
    """An independent implementation of SAM 3's published image transform (Sam3ImageProcessor
    defaults, facebook/sam3 preprocessor_config.json: 1008x1008 bilinear without keeping the
    aspect ratio, rescale 1/255, mean = std = 0.5) on transformers' PIL backend; the text as
    Sam3Processor tokenizes it (padding="max_length", max_length=32)."""
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import PILImageResampling

    class PilSam3(PilBackend):
        resample = PILImageResampling.BILINEAR
        image_mean = image_std = [0.5, 0.5, 0.5]
        size = {"height": 1008, "width": 1008}
        do_resize = do_rescale = do_normalize = do_convert_rgb = True

    tok = transformers.AutoTokenizer.from_pretrained(folder("tiny:sam3"))
    pil = PilSam3()

    def process(image, text):
        return {**pil(images=image, return_tensors="pt"),
                **tok(text, return_tensors="pt", padding="max_length", max_length=32)}

    return process


def test_select_sam3_equals_the_librarys_instance_segmentation():
    """Inputs: text ids equal to Sam3Processor's; pixels within 2 grey levels of the PIL
    implementation of the published transform (a quarter level on average: PIL's and torch's
    fixed-point bilinear round differently). Outputs: on the module's raw outputs, the
    library's `post_process_instance_segmentation` at the image's size gives the same scores
    (1e-6) and boxes (1e-3 px), best first (the module keeps the best 10), and masks that
    differ on under 0.1% of pixels (the module resizes logits, the library probabilities;
    the sigmoid is monotonic, so only pixels at the threshold's edge can differ)."""
    select = tool("Select", backend="sam3")
    post = library_method("transformers.models.sam3.image_processing_sam3",
                          "Sam3ImageProcessor", "post_process_instance_segmentation",
                          ("_scale_boxes",))
    processor = sam3_pil_processor()
    s = select.settings
    for image, query in [(photos()[1], "Red car")]:  # non-square: resized without its aspect
        with captured("Sam3Model") as calls:
            got = select(image=image, object=Objects.empty(image.size), query=query)
        (kwargs, out), = calls
        ref_in = processor(image, query.lower())  # a lower-case noun phrase, as SAM 3 is prompted
        assert torch.equal(kwargs["input_ids"], ref_in["input_ids"])
        assert torch.equal(kwargs["attention_mask"], ref_in["attention_mask"])
        level = (kwargs["pixel_values"] - ref_in["pixel_values"]).abs() / (2 / 255)
        assert kwargs["pixel_values"].shape == (1, 3, 1008, 1008)
        assert level.max().item() <= 2 + 1e-4 and level.mean().item() < 0.25
        ref = post(None, out, threshold=s["sam3_threshold"], mask_threshold=s["mask_threshold"],
                   target_sizes=[image.size[::-1]])[0]
        order = torch.argsort(-ref["scores"], stable=True)[:10]
        assert len(got) == len(order) > 0 and set(got.labels) == {query}
        assert np.allclose(got.scores, ref["scores"][order].numpy(), atol=1e-6)
        assert np.abs(got.boxes - ref["boxes"][order].numpy()).max() < 1e-3
        for region, mask in zip(got, ref["masks"][order].numpy().astype(bool)):
            assert region.mask.shape == mask.shape == image.size[::-1]
            assert (region.mask != mask).mean() < 1e-3


# -- Select: LangSAM (classic: GroundingDINO boxes -> SAM masks) -----------------------------------

def test_select_langsam_equals_the_librarys_grounding_and_sam_masks():
    """GroundingDINO as for Loc; SAM's inputs equal SamProcessor's for the image and the
    grounded boxes (clipped to the image, in its pixels) to 1e-4 of a pixel; every mask the
    module gives is, pixel for pixel, one of SamProcessor.post_process_masks's on the
    module's raw SAM outputs (original size, padding removed)."""
    select = tool("Select", backend="sam")
    s, cks = select.settings, select.settings["checkpoints"]
    gd = transformers.GroundingDinoProcessor.from_pretrained(folder(cks["grounding_dino"]))
    sam = transformers.SamProcessor.from_pretrained(folder(cks["sam"]))
    image = photos()[1]
    w, h = image.size
    cands = Objects([(0, 0, w / 2, h), (w / 2, 0, w, h), (w / 4, h / 4, w * 3 / 4, h)],
                               image.size, labels=["thing"] * 3)
    with captured("GroundingDinoForObjectDetection") as gd_calls, \
            captured("SamModel") as sam_calls:
        got = select(image=image, object=cands, query="person")
    (gd_kwargs, gd_out), = gd_calls
    (sam_kwargs, sam_out), = sam_calls
    grounded = gd.post_process_grounded_object_detection(
        gd_out, gd_kwargs["input_ids"], threshold=s["box_threshold"],
        text_threshold=s["text_threshold"], target_sizes=[(h, w)])[0]["boxes"].numpy()
    grounded = np.stack([grounded[:, 0].clip(0, w), grounded[:, 1].clip(0, h),
                         grounded[:, 2].clip(0, w), grounded[:, 3].clip(0, h)], axis=1)
    ref_in = sam(images=image, input_boxes=[grounded.tolist()], return_tensors="pt")
    assert torch.equal(sam_kwargs["pixel_values"], ref_in["pixel_values"])
    sent = sam_kwargs["input_boxes"][0]
    assert 0 < len(sent) <= len(grounded)
    for box in sent:  # each box SAM got is one the library grounded, in SAM's frame
        assert (ref_in["input_boxes"][0] - box).abs().amax(dim=1).min().item() < 1e-4
    ref_masks = sam.post_process_masks(sam_out.pred_masks, ref_in["original_sizes"],
                                       ref_in["reshaped_input_sizes"])[0][:, 0].numpy()
    assert ref_masks.shape[1:] == (h, w) and len(got) > 0
    for region in got:
        assert any(np.array_equal(region.mask, m) for m in ref_masks)


# -- Classify: SigLIP2 (default) and CLIP (classic) ------------------------------------------------

@pytest.mark.parametrize("backend, model_class, processor_class", [
    ("siglip2", "Siglip2Model", "Siglip2Processor"), ("clip", "CLIPModel", "CLIPProcessor")])
def test_classify_equals_the_librarys_zero_shot_pipeline(backend, model_class, processor_class):
    """Each object's crop scored by the library's zero-shot-image-classification pipeline with
    the module's prompt as hypothesis template (SigLIP: sigmoid, text padded to 64; CLIP:
    softmax): the score of the label the module gives equals the pipeline's to 1e-5, and so
    does every other pairing's ranking (the module pairs objects and labels best first)."""
    classify = tool("Classify", backend=backend, crop_context=0.0)
    path = folder(classify.settings["checkpoint"])
    model = getattr(transformers, model_class).from_pretrained(path).eval()
    proc = getattr(transformers, processor_class).from_pretrained(path)
    pipe = transformers.pipeline("zero-shot-image-classification", model=model,
                                 tokenizer=proc.tokenizer, image_processor=proc.image_processor,
                                 device="cpu")
    image = photos()[1]
    boxes = [(0, 0, 200, 361), (150, 40, 475, 300)]  # whole pixels: the crop is the box
    labels = ["a man", "a dog", "red car"]
    got = classify(image=image, object=Objects(boxes, image.size), categories=labels)
    ref = []
    for box in boxes:
        scores = pipe(image.crop(box), candidate_labels=labels,
                      hypothesis_template=classify.settings["prompt"])
        ref.append({r["label"]: r["score"] for r in scores})
    assert len(got) == 2
    for region in got:
        row = ref[boxes.index(tuple(int(v) for v in region.box))]
        assert region.extra["class_score"] == pytest.approx(row[region.label], abs=1e-5)
    # the pairing is the greedy one on the library's scores
    table = np.array([[row[l] for l in labels] for row in ref])
    best = np.unravel_index(np.argmax(table), table.shape)
    first = got[0]
    assert (boxes.index(tuple(int(v) for v in first.box)), labels.index(first.label)) == best


# -- Vqa: the chat VLM (default, Qwen3-VL) and BLIP (classic) -------------------------------------

def test_vqa_vlm_equals_the_librarys_image_text_to_text_pipeline():
    """The library's image-text-to-text pipeline (the checkpoint's chat template with its
    generation prompt, greedy decoding, new text only) on each (image, question + the
    module's instruction), beside the module running both as one left-padded batch: the
    same prompt tokens (the padding aside), the same image patches and grid, next-token
    logits within 1e-4 (padding changes the sums' order), and the text the module shortens
    to its answer. (The random tiny model writes newlines, so the logits carry the check.)"""
    from visprog.models.vlm import load_vlm
    from visprog.tools.vqa import short_answer

    vqa = tool("Vqa")
    s = vqa.settings
    model, processor = load_vlm(folder(s["checkpoint"]), "cpu", torch.float32)
    pipe = transformers.pipeline("image-text-to-text", model=model, processor=processor,
                                 device="cpu")
    images, questions = photos(), ["what color is the car?", "how many dogs are there?"]
    with captured("Qwen3VLForConditionalGeneration") as calls, \
            captured("Qwen3VLVisionModel") as seen:
        got = vqa.batch_fn([{"image": im, "question": q} for im, q in zip(images, questions)])
    batch = calls[0][0]  # the prefill; the vision tower saw the images just before
    mask = batch["attention_mask"].bool()
    assert mask.shape[0] == 2 and not mask[:, -1].logical_not().any()  # padded on the left
    (vision, _), = seen
    grids = vision["grid_thw"]
    patches = vision["arg0"].split([int(g.prod()) for g in grids])
    for i, (image, question, answer) in enumerate(zip(images, questions, got)):
        chat = [{"role": "user", "content": [
            {"type": "image", "image": image},
            {"type": "text", "text": f"{question}\n{s['instruction']}"}]}]
        with captured("Qwen3VLForConditionalGeneration") as ref_calls, \
                captured("Qwen3VLVisionModel") as ref_seen:
            text = pipe(text=chat, max_new_tokens=s["max_new_tokens"], return_full_text=False,
                        generate_kwargs={"do_sample": False})[0]["generated_text"]
        ref, ref_out = ref_calls[0]
        assert torch.equal(batch["input_ids"][i][mask[i]], ref["input_ids"][0])
        assert torch.equal(grids[i], ref_seen[0][0]["grid_thw"][0])
        assert torch.equal(patches[i], ref_seen[0][0]["arg0"])
        assert (calls[0][1].logits[i, -1] - ref_out.logits[0, -1]).abs().max().item() < 1e-4
        assert answer == short_answer(text, s["max_answer_words"])


def test_vqa_blip_equals_the_model_cards_generation():
    """BLIP as its model card runs it (processor(image, question), generate, decode without
    special tokens), lower-cased and stripped: the module's answer, one call and a batch."""
    vqa = tool("Vqa", backend="blip")
    path = folder(vqa.settings["checkpoint"])
    model = transformers.BlipForQuestionAnswering.from_pretrained(path).eval()
    processor = transformers.BlipProcessor.from_pretrained(path)
    images, questions = photos(), ["what color is the car?", "how many dogs are there?"]
    got = vqa.batch_fn([{"image": im, "question": q} for im, q in zip(images, questions)])
    for image, question, answer in zip(images, questions, got):
        inputs = processor(image, question, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=vqa.settings["max_new_tokens"])
        ref = processor.decode(ids[0], skip_special_tokens=True)
        assert answer == " ".join(ref.lower().split()).rstrip(".").strip()
        assert answer == vqa(image=image, question=question)


# -- Seg: Mask2Former panoptic ---------------------------------------------------------------------

def test_seg_equals_the_librarys_panoptic_segmentation_pipeline():
    """The library's image-segmentation pipeline (panoptic, the module's thresholds) on the
    same photo: the module's pixel values are its processor's, and its segments are the
    pipeline's (checkpoint label, score to 1e-6, mask pixel for pixel), best first."""
    seg = tool("Seg", clean_labels=False, threshold=0.95)  # drops a few of the tiny model's
    s = seg.settings
    path = folder(s["checkpoint"])
    model = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(path).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    pipe = transformers.pipeline("image-segmentation", model=model, image_processor=processor,
                                 device="cpu")
    image = photos()[1]
    with captured("Mask2FormerForUniversalSegmentation") as calls:
        got = seg(image=image)
    assert torch.equal(calls[0][0]["pixel_values"],
                       processor(images=image, return_tensors="pt")["pixel_values"])
    ref = pipe(image, subtask="panoptic", threshold=s["threshold"],
               mask_threshold=s["mask_threshold"],
               overlap_mask_area_threshold=s["overlap_mask_area_threshold"])
    ref = sorted(ref, key=lambda r: -r["score"])
    assert len(got) == len(ref) > 1
    for region, r in zip(got, ref):
        assert region.label == r["label"] and region.score == pytest.approx(r["score"], abs=1e-6)
        assert np.array_equal(region.mask, np.asarray(r["mask"]) > 0)


# -- Depth: Depth Anything V2 ----------------------------------------------------------------------

def test_depth_equals_the_librarys_depth_estimation_pipeline():
    """The library's depth-estimation pipeline on the same photo: the module's pixel values
    are its processor's; each object's distance is what the pipeline's map gives by the
    module's documented rule (Depth Anything's relative output is inverse depth, larger =
    nearer: distance = 1 - the map stretched between its 1st and 99th percentiles; the median
    over a mask, the box_quantile over a box), to the 4 decimals kept, nearest first; and the
    trace's map image (near = bright) matches the pipeline's own depth image (correlation >
    0.99 after the percentile stretch)."""
    depth = tool("Depth")
    s = depth.settings
    path = folder(s["checkpoint"])
    model = transformers.AutoModelForDepthEstimation.from_pretrained(path).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    pipe = transformers.pipeline("depth-estimation", model=model, image_processor=processor,
                                 device="cpu")
    image = photos()[1]
    w, h = image.size
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - 300) ** 2 + (yy - 150) ** 2 <= 60 ** 2
    objects = Objects([(0, 0, 120, 100), (200, 200, 475, 361), (10, 250, 90, 360)],
                                 image.size, labels=["a", "b", "c"])
    objects = objects.with_regions([*objects, Region(
        box=(240, 90, 361, 211), mask=disc, label="d")])
    with captured("DepthAnythingForDepthEstimation") as calls:
        got = depth(image=image, object=objects)
    assert torch.equal(calls[0][0]["pixel_values"],
                       processor(images=image, return_tensors="pt")["pixel_values"])
    ref = pipe(image)
    raw = ref["predicted_depth"].numpy().astype(np.float64)
    assert raw.shape == (h, w)
    lo, hi = np.percentile(raw, [1, 99])
    distance = 1.0 - np.clip((raw - lo) / (hi - lo), 0, 1)
    want = {r.label: float(np.quantile(distance[objects.region_mask(i)],
                                       0.5 if r.mask is not None else s["box_quantile"]))
            for i, r in enumerate(objects)}
    assert [r.label for r in got] == sorted(want, key=want.get)
    for region in got:
        assert region.extra["depth"] == pytest.approx(want[region.label], abs=1e-4)
    shown = np.asarray(got[0].extra["depth_map"], dtype=np.float64)
    theirs = np.asarray(ref["depth"].resize(shown.shape[::-1], Image.BILINEAR), np.float64)
    assert np.corrcoef(shown.ravel(), theirs.ravel())[0, 1] > 0.99


# -- Replace: the mask the inpainting pipeline gets ----------------------------------------------

@pytest.mark.parametrize("backend", ["sdxl", "sd"])
def test_replace_gives_the_pipeline_the_object_as_the_area_to_repaint(backend):
    """diffusers' inpainting pipelines repaint where the mask is white and keep the rest.
    Inside the pipeline, on the module's call: the UNet's mask channel is 1 on every latent
    cell well inside the object and 0 on every cell well away from it (more than the
    dilation and a cell), and the masked image the VAE encodes is blanked (0) inside the
    object and is the photo away from it. A mask passed the wrong way round fails both."""
    pytest.importorskip("diffusers")
    replace = tool("Replace", backend=backend, resolution=128, steps=2)
    image = photos()[1]
    w, h = image.size
    x1, y1, x2, y2 = 100, 80, 300, 280
    mask = np.zeros((h, w), bool)
    mask[y1:y2, x1:x2] = True
    objects = Objects([(x1, y1, x2, y2)], image.size)
    with captured("UNet2DConditionModel") as unet_calls, captured("Encoder") as vae_calls:
        out = replace(image=image, object=objects, prompt="a red car")
    assert out.size == image.size
    sample = unet_calls[0][0]["arg0"]  # (batch, latents 4 + mask 1 + masked image 4, h/8, w/8)
    assert sample.shape[1] == 9
    lh, lw = sample.shape[-2:]
    cx, cy = w / lw, h / lh  # one latent cell, in the photo's pixels
    margin = replace.settings["mask_dilation"]
    inside = np.zeros((lh, lw), bool)
    away = np.zeros((lh, lw), bool)
    for i in range(lh):
        for j in range(lw):
            a, b, c, d = j * cx, i * cy, (j + 1) * cx, (i + 1) * cy  # the cell's extent
            inside[i, j] = a >= x1 + cx and c <= x2 - cx and b >= y1 + cy and d <= y2 - cy
            away[i, j] = (c < x1 - margin - cx or a > x2 + margin + cx
                          or d < y1 - margin - cy or b > y2 + margin + cy)
    assert inside.sum() >= 9 and away.sum() >= 50
    channel = sample[0, 4].numpy()
    assert (channel[inside] == 1).all() and (channel[away] == 0).all()
    # the masked image, the photo at the working size in [-1, 1] with the object blanked
    images = [k["arg0"][0] for k, _ in vae_calls]
    masked = [x for x in images if (x == 0).all(dim=0).float().mean() > 0.1]
    assert len(masked) == 1
    px, py = masked[0].shape[2] / w, masked[0].shape[1] / h  # working / photo pixels
    hole = masked[0][:, int(np.ceil(y1 * py)) + 1:int(y2 * py) - 1,
                     int(np.ceil(x1 * px)) + 1:int(x2 * px) - 1]
    assert (hole == 0).all()
    kept = masked[0][:, :int((y1 - margin) * py) - 1, :]  # the rows above the object
    assert (kept != 0).float().mean() > 0.95 and kept.abs().max() <= 1


# -- Ocr: PP-OCR through rapidocr (real weights) ---------------------------------------------

def test_ocr_reads_what_rapidocr_reads_from_the_image_file(tmp_path):
    """RapidOCR as documented (given the image file, which it reads as OpenCV does, BGR) and
    LocText given the picture: the same lines, boxes (the quadrilaterals' bounds, 1e-3 px)
    and scores (1e-5). Coloured text, so the channel order changes the readings' scores."""
    from PIL import ImageFont

    RapidOCR = pytest.importorskip("rapidocr_onnxruntime").RapidOCR

    image = photos()[1]
    draw = ImageDraw.Draw(image)
    fnt = ImageFont.load_default(size=40)
    draw.rectangle((20, 20, 330, 80), fill=(250, 210, 40))
    draw.text((30, 25), "PLATFORM 9", font=fnt, fill=(200, 20, 160))
    draw.rectangle((120, 280, 460, 340), fill=(30, 60, 200))
    draw.text((130, 285), "Main Street", font=fnt, fill=(240, 240, 90))
    path = tmp_path / "sign.png"
    image.save(path)
    loctext = tool("LocText", min_score=0.0, merge_gap=-1.0)  # every reading, none joined
    got = loctext(image=image)
    s = loctext.settings
    engine = RapidOCR(text_score=0.0, max_side_len=s["max_side"], print_verbose=False)
    result, _ = engine(str(path), use_cls=s["use_angle_cls"])
    ref = sorted(((float(np.min(np.asarray(q)[:, 0])), float(np.min(np.asarray(q)[:, 1])),
                   float(np.max(np.asarray(q)[:, 0])), float(np.max(np.asarray(q)[:, 1])),
                   " ".join(str(t).split()), float(sc)) for q, t, sc in result),
                 key=lambda r: r[4])
    mine = sorted(((*r.box, r.label, r.score) for r in got), key=lambda r: r[4])
    assert {r[4] for r in ref} >= {"PLATFORM 9", "Main Street"} or \
        {r[4] for r in ref} >= {"PLATFORM9", "Main Street"}
    assert [r[4] for r in mine] == [r[4] for r in ref]
    for a, b in zip(mine, ref):
        assert np.allclose(a[:4], b[:4], atol=1e-3) and a[5] == pytest.approx(b[5], abs=1e-5)


# -- FaceDet: YuNet's decoding ---------------------------------------------------------------

def yunet_reference(onnx_path: str, image: Image.Image, max_side: int) -> np.ndarray:
    """YuNet's published decoding (OpenCV's FaceDetectorYN, face_detect.cpp, and the
    opencv_zoo demo), written out here on onnxruntime's raw outputs: the image scaled to at
    most `max_side` (the module's rule), as BGR, zero-padded at the bottom and right to
    multiples of 32, unnormalised; for each stride s (8, 16, 32) and anchor (row r, col c):
    score = sqrt(clip(cls) * clip(obj)), centre ((c, r) + bbox[:2]) * s, size exp(bbox[2:])
    * s, landmarks ((c, r) + kps) * s; then back to the photo's pixels, boxes clipped to it.
    Rows: x1, y1, x2, y2, 5 landmarks (x, y), score; best first."""
    ort = pytest.importorskip("onnxruntime")
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    small = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    bgr = np.asarray(small, dtype=np.float32)[:, :, ::-1]
    sh, sw = bgr.shape[:2]
    ph, pw = (sh - 1) // 32 * 32 + 32, (sw - 1) // 32 * 32 + 32
    blob = np.zeros((1, 3, ph, pw), np.float32)
    blob[0, :, :sh, :sw] = bgr.transpose(2, 0, 1)
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(onnx_path)  # exported at 320x320: let onnxruntime take any size, as
    for dim in graph.graph.input[0].type.tensor_type.shape.dim[2:]:  # OpenCV's DNN does
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    for value in graph.graph.output:
        value.type.tensor_type.ClearField("shape")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: blob})))
    rows = []
    for s in (8, 16, 32):
        cols, nrows = pw // s, ph // s
        cls, obj = out[f"cls_{s}"][0, :, 0], out[f"obj_{s}"][0, :, 0]
        bbox, kps = out[f"bbox_{s}"][0], out[f"kps_{s}"][0]
        r, c = np.divmod(np.arange(nrows * cols), cols)
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
        bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
        marks = [((c + kps[:, 2 * n]) * s, (r + kps[:, 2 * n + 1]) * s) for n in range(5)]
        rows.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2,
                              *[v for xy in marks for v in xy], score], axis=1))
    rows = np.concatenate(rows).astype(np.float64)
    rows[:, :14] /= scale
    rows[:, [0, 2]] = rows[:, [0, 2]].clip(0, w)  # Objects keep boxes inside the image
    rows[:, [1, 3]] = rows[:, [1, 3]].clip(0, h)
    return rows[np.argsort(-rows[:, 14], kind="stable")]


def test_facedet_yunet_decodes_as_yunets_published_decoding():
    """On tiny:yunet (YuNet's inputs and outputs, random weights), every anchor a candidate
    (score threshold 0), the photo scaled down (max_side 256): each face FaceDet gives is one
    of the reference decoding's anchors, box corners and landmarks to 0.01 px of the photo
    (1e-5 relative for far-off ones) and scores to 1e-6 in their squares (OpenCV's DNN and
    onnxruntime round differently in the last digits; see the tolerances below),
    and the best anchor comes first. (Which anchors survive OpenCV's own non-maximum
    suppression is the library's business, not checked here.)"""
    pytest.importorskip("cv2")
    facedet = tool("FaceDet", backend="yunet", score_threshold=0.0, max_side=256)
    image = photos()[1]
    got = facedet(image=image)
    ref = yunet_reference(str(Path(folder("tiny:yunet")) / "yunet.onnx"), image, 256)
    assert len(ref) == 32 * 28 + 16 * 14 + 8 * 7  # 256x195, padded to 256x224
    mine = np.array([[*r.box, *[v for xy in r.extra["landmarks"] for v in xy], r.score]
                     for r in got])
    assert 10 < len(mine) < len(ref)
    # the tolerances: 0.01 px (plus float32's 1e-5 relative, for the far-off boxes of random
    # weights); scores by their squares (cls x obj) to 1e-6, since the square root magnifies
    # last-digit differences near 0
    mine[:, 14], ref[:, 14] = mine[:, 14] ** 2, ref[:, 14] ** 2
    tol = np.array([1e-2] * 14 + [1e-6]) + np.abs(ref) * np.array([1e-5] * 14 + [0])
    gap = (np.abs(mine[:, None, :] - ref[None, :, :]) / tol).max(axis=2)  # faces x anchors
    assert gap.min(axis=1).max() <= 1.0, "a face that is no decoded anchor"
    assert gap[0, 0] <= 1.0  # the best first


# -- the tiny checkpoints take the real ones' input settings ---------------------------------------

# tiny name -> (the checkpoint it stands in for, {what: published value}), read from the
# checkpoints' published preprocessor_config.json / processor_config.json, tokenizer_config.json
# and config.json (where the class defaults equal them, the builders use the defaults).
# tiny:mask2former is the exception: it keeps a small working size (shortest edge 128)
# so the tests stay fast; its processing is compared with the pipeline's all the same.
PUBLISHED = {
    "mm_grounding_dino": ("openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", {
        "image.size": {"shortest_edge": 800, "longest_edge": 1333},
        "tokenizer.padding_side": "right", "tokenizer.model_max_length": 512,
        "config.max_text_len": 256}),
    "grounding_dino": ("IDEA-Research/grounding-dino-tiny", {
        "image.size": {"shortest_edge": 800, "longest_edge": 1333},
        "tokenizer.padding_side": "right", "tokenizer.model_max_length": 512,
        "config.max_text_len": 256}),
    "sam": ("facebook/sam-vit-base", {
        "image.size": {"longest_edge": 1024}, "image.pad_size": {"height": 1024, "width": 1024},
        "config.vision_config.image_size": 1024, "config.vision_config.patch_size": 16}),
    "siglip2": ("google/siglip2-base-patch16-naflex", {
        "image.patch_size": 16, "image.max_num_patches": 256, "image.image_mean": [0.5] * 3,
        "tokenizer.padding_side": "right", "tokenizer.model_max_length": 64,
        "config.text_config.max_position_embeddings": 64}),
    "clip": ("openai/clip-vit-base-patch32", {
        "image.size": {"shortest_edge": 224}, "image.crop_size": {"height": 224, "width": 224},
        "tokenizer.padding_side": "right", "tokenizer.model_max_length": 77,
        "config.vision_config.image_size": 224, "config.vision_config.patch_size": 32,
        "config.text_config.max_position_embeddings": 77}),
    "blip_vqa": ("Salesforce/blip-vqa-capfilt-large", {
        "image.size": {"height": 384, "width": 384}, "tokenizer.padding_side": "right",
        "tokenizer.model_max_length": 512, "config.vision_config.image_size": 384,
        "config.vision_config.patch_size": 16}),
    "qwen3_vl": ("Qwen/Qwen3-VL-2B-Instruct", {
        "image.patch_size": 16, "image.merge_size": 2, "image.image_mean": [0.5] * 3,
        "image.size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "tokenizer.eos_token": "<|im_end|>", "tokenizer.pad_token": "<|endoftext|>"}),
    "depth_anything": ("depth-anything/Depth-Anything-V2-Small-hf", {
        "image.size": {"height": 518, "width": 518}, "image.keep_aspect_ratio": True,
        "image.ensure_multiple_of": 14, "image.resample": 3}),
    "sam3": ("facebook/sam3", {
        "image.size": {"height": 1008, "width": 1008}, "image.image_mean": [0.5] * 3,
        "tokenizer.model_max_length": 32, "config.text_config.max_position_embeddings": 32}),
}


def _published_setting(path: str, what: str) -> Any:
    import json

    part, *keys = what.split(".")
    if part == "tokenizer":
        return getattr(transformers.AutoTokenizer.from_pretrained(path), keys[0])
    folder_ = Path(path)
    if part == "config":
        value: Any = json.loads((folder_ / "config.json").read_text())
    else:  # the image processor's settings, wherever transformers wrote them
        pre = folder_ / "preprocessor_config.json"
        value = (json.loads(pre.read_text()) if pre.exists() else
                 json.loads((folder_ / "processor_config.json").read_text())["image_processor"])
    for key in keys:
        value = value[key]
    return value


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_tiny_checkpoints_take_the_published_input_settings(name):
    source, settings = PUBLISHED[name]
    path = folder(f"tiny:{name}")
    got = {what: _published_setting(path, what) for what in settings}
    assert got == settings, f"tiny:{name} differs from {source}"
