"""Where the codec's binary parts go: blob stores (sinks when writing, sources when reading).

The codec (`visprog.values.codec`) turns a value into a tree of JSON nodes; pixels and mask
bits don't belong in JSON, so each image or mask node holds a *reference* made by a store:

- `BytesBlobs`: the blobs follow the JSON header in one bytes value (`codec.encode`); the
  reference is the blob's index. PNG images for the step cache (compact on disk) or, with
  `image_format="raw"`, raw pixels for the Ray wire (about 50x faster than PNG at each end).
  Masks are bit-packed.
- `DocumentBlobs`: a JSON document's blobs (the saved trace): PNG files in a folder beside
  it (`{"file": "run_files/img_0.png"}`, relative to the document's folder), or base64 PNGs
  in its top-level "blobs" table (`{"blob": "img_0"}`). Masks are 1-bit PNGs, so a person
  can look at them. Identical images are stored once.

A store is any object with the attributes and methods of `BlobStore`.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Hashable, Mapping, Protocol

from visprog.errors import BlobError, MissingBlob


class BlobStore(Protocol):
    image_format: str  # "png" or "raw": how the codec encodes an image's pixels
    mask_format: str   # "bits" (packed) or "png" (a 1-bit image)
    dedup: bool        # store each distinct image once (costs a hash of its pixels)

    def put(self, data: bytes, kind: str) -> dict[str, Any]:
        """Store `data` (an image or mask's encoding; `kind` is "img" or "mask") and return
        the reference fields the node will carry."""

    def read(self, ref: Mapping[str, Any], what: str) -> tuple[Hashable, bytes, str]:
        """The bytes a reference points to, with a key that is equal for equal references
        (so each blob is decoded once) and a label for messages ("image file /x/a.png").

        Raises:
            BlobError: the reference is malformed or its blob missing or unreadable.
        """


class BytesBlobs:
    """Blobs kept in a list, stored after the header of `codec.encode`'s bytes."""

    mask_format = "bits"
    dedup = False

    def __init__(self, image_format: str = "png", blobs: list[Any] | None = None):
        if image_format not in ("png", "raw"):
            raise ValueError(f"image_format is 'png' or 'raw', not {image_format!r}")
        self.image_format = image_format
        self.blobs: list[Any] = [] if blobs is None else blobs

    def put(self, data: bytes, kind: str) -> dict[str, Any]:
        self.blobs.append(data)
        return {"blob": len(self.blobs) - 1}

    def read(self, ref: Mapping[str, Any], what: str) -> tuple[Hashable, bytes, str]:
        index = ref.get("blob")
        # bool is an int: a `true` index is as malformed as a string
        if type(index) is not int or not 0 <= index < len(self.blobs):
            raise BlobError(f"{what} refers to blob {index!r:.40}, but there are "
                            f"{len(self.blobs)}")
        return index, self.blobs[index], f"{what} blob {index}"


class DocumentBlobs:
    """Blobs of a JSON document whose folder is `base_dir`: written as PNG files under
    `folder` (made on the first write), or, when `folder` is None, as base64 in `table`.
    Reads both kinds of reference, whichever way the document was written."""

    image_format = "png"
    mask_format = "png"
    dedup = True

    def __init__(self, base_dir: str | Path, *, folder: str | Path | None = None,
                 table: Any = None):
        self.base_dir = Path(base_dir)
        self.folder = None if folder is None else Path(folder)
        self.table: dict[str, Any] = table if isinstance(table, dict) else {}
        self._count = 0
        self._root: Path | None = None

    def put(self, data: bytes, kind: str) -> dict[str, Any]:
        name = f"{kind}_{self._count}"
        self._count += 1
        if self.folder is None:
            self.table[name] = base64.b64encode(data).decode("ascii")
            return {"blob": name}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        path.write_bytes(data)
        return {"file": path.relative_to(self.base_dir).as_posix()}

    def read(self, ref: Mapping[str, Any], what: str) -> tuple[Hashable, bytes, str]:
        if "blob" in ref:
            name = ref["blob"]
            if not isinstance(name, str) or name not in self.table:
                raise BlobError(f"inline {what} {name!r:.80} is missing from \"blobs\"")
            try:
                data = base64.b64decode(self.table[name], validate=True)
            except (binascii.Error, ValueError, TypeError) as e:
                raise BlobError(f"inline {what} is not valid base64: {e}") from e
            return ("blob", name), data, f"inline {what}"
        if "file" in ref:
            rel = ref["file"]
            if not isinstance(rel, str):
                raise BlobError(f"bad {what} file name: {rel!r:.80}")
            if self._root is None:
                self._root = self.base_dir.resolve()
            file = (self._root / rel).resolve()
            # Only files under the document's folder: a trace should not point anywhere else.
            if not file.is_relative_to(self._root):
                raise BlobError(f"{what} file {rel!r} is outside the trace's folder")
            try:
                data = file.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
                raise MissingBlob(f"{what} file not found: {file}", str(file)) from e
            except OSError as e:
                raise BlobError(f"could not read {what} file {file}: {e}") from e
            return ("file", str(file)), data, f"{what} file {file}"
        raise BlobError(f"{what} reference has neither 'file' nor 'blob': {sorted(ref)}")
