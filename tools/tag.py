"""Tag: each object's box and label (and score) drawn on the image (SPEC 4)."""
from __future__ import annotations

from PIL import Image

from visprog.traces.draw import draw_objects
from visprog.registry import tool
from visprog.values import Objects

from .crop import check_objects_image


@tool("Tag", params={"image": "Image", "object": "Objects"}, returns="Image",
      tasks=("knowtag",))
def tag(image: Image.Image, object: Objects) -> Image.Image:  # noqa: A002 (SPEC name)
    """Draws each object's box and label (and score) on the image."""
    rgb = check_objects_image(image, object, "Tag")
    # Boxes and tags only: SPEC's Tag labels objects; masks would hide what they label.
    return draw_objects(rgb, object, masks=False, labels=True, scores=True)


TOOLS = [tag]
