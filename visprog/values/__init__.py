"""Values and types (SPEC 2): Image inputs, Objects, the type vocabulary and its one
compatibility rule, and the one codec that values cross every border with."""
from visprog.values.images import DEFAULT_MAX_PIXELS, load_image
from visprog.values.objects import Objects, Region
from visprog.values.types import TYPES, check_output, fits, parse_types, type_of

__all__ = ["DEFAULT_MAX_PIXELS", "load_image", "Objects", "Region", "TYPES", "check_output",
           "fits", "parse_types", "type_of"]
