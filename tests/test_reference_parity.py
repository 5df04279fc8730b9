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
import inspect
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
from visprog.tools import ToolContext, build_module  # noqa: E402
from visprog.values import Objects  # noqa: E402

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
    """Every forward of a model of class `class_name` while inside: (kwargs, output)."""
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
    """The processor's inputs for the model card's prompt (lower case, ended by ' .'), and
    `post_process_grounded_object_detection` on the module's raw outputs at the image's size:
    the module's boxes are the library's, clipped to the image, best first (NMS off here),
    to 1e-4 px; its scores equal."""
    loc = tool("Loc", backend=backend, nms_iou=1.0, max_detections=1000)
    s = loc.settings
    processor = transformers.GroundingDinoProcessor.from_pretrained(folder(s["checkpoint"]))
    for image, query in zip(photos(), ("person", "A Red car.")):
        with captured(model_class) as calls:
            got = loc(image=image, object=query)
        (kwargs, out), = calls
        ref_in = processor(images=image, text=query.lower().rstrip(".") + " .",
                           return_tensors="pt")
        for key in ("pixel_values", "pixel_mask", "input_ids", "attention_mask",
                    "token_type_ids"):
            assert torch.equal(kwargs[key], ref_in[key]), key
        ref = processor.post_process_grounded_object_detection(
            out, ref_in["input_ids"], threshold=s["box_threshold"],
            text_threshold=s["text_threshold"], target_sizes=[image.size[::-1]])[0]
        w, h = image.size
        boxes = ref["boxes"].numpy().astype(np.float64)
        boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                          boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        order = np.argsort(-ref["scores"].numpy()[keep], kind="stable")
        assert len(got) == keep.sum() > 0
        assert np.abs(got.boxes - boxes[keep][order]).max() < 1e-4
        assert np.allclose(got.scores, ref["scores"].numpy()[keep][order], atol=1e-7)
        assert set(got.labels) == {query.strip()}


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
    for image, query in zip(photos(), ("a person", "red car")):
        with captured("Sam3Model") as calls:
            got = select(image=image, object=Objects.empty(image.size), query=query)
        (kwargs, out), = calls
        ref_in = processor(image, query)
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
    cands = Objects.from_boxes([(0, 0, w / 2, h), (w / 2, 0, w, h), (w / 4, h / 4, w * 3 / 4, h)],
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
    got = classify(image=image, object=Objects.from_boxes(boxes, image.size), categories=labels)
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
