"""Values and types (SPEC 2): Image and Video inputs, Objects, Tracks, the type vocabulary
and its one compatibility rule, and the one codec that values cross every border with."""
from visprog.values.images import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE,
                                   load_image)
from visprog.values.objects import Objects, Region
from visprog.values.video import Tracks, Video
from visprog.values.videos import VIDEO_DEFAULTS, VideoSettings, load_video
from visprog.values.types import (MAX_NESTING, TYPES, check_output, fits, nesting_depth,
                                  parse_types, type_of)

__all__ = ["DEFAULT_MAX_ASPECT", "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "load_image",
           "Objects", "Region", "Tracks", "Video", "VIDEO_DEFAULTS", "VideoSettings",
           "load_video", "MAX_NESTING", "TYPES", "check_output", "fits",
           "nesting_depth", "parse_types", "type_of"]
