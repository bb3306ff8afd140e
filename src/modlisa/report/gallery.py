"""The gallery of the report: the best and worst predictions of each evaluated split, as small pictures.

``modlisa eval`` writes ``outputs/eval_<name>_masks/`` (``--save_masks K``, 4 by default): per picked query an
overlay (the image, the predicted mask tinted magenta and outlined, the ground truth outlined in green) and
``index.json`` (tag best/worst, rank, file, query, is_sentence, IoU, picture names). The report reads that
index, never the file names, and writes a downscaled JPEG copy of each overlay (``THUMB_SIZE`` px at most)
into ``<report>/gallery/``: report.md links those files, report.html embeds the same bytes as base64.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

Summary = dict[str, Any]
THUMB_SIZE = 320
JPEG_QUALITY = 85
FOLDER = "gallery"
HOW_TO = "modlisa eval --checkpoint {root} --split {split} --save_masks 4"


@dataclass
class Picture:
    """One gallery picture: what ``index.json`` says of it, its thumbnail and the full-size overlay."""

    tag: str
    rank: int
    file: str
    query: str
    is_sentence: bool
    iou: float
    thumb: Path
    original: Path
    link: str = ""  # the thumbnail relative to the report folder (report.md links it)
    original_link: str = ""  # the full-size overlay relative to the report folder

    @property
    def kind(self) -> str:
        return "long query" if self.is_sentence else "short query"

    @property
    def label(self) -> str:
        return f"{self.tag} {self.rank}"

    def caption(self) -> str:
        """One line: rank, IoU in % (one decimal), short/long, the query, the image file name."""
        return f"{self.label}: IoU {100 * self.iou:.1f} %, {self.kind}: \"{self.query}\" ({Path(self.file).name})"


@dataclass
class Gallery:
    """The pictures of one run and one evaluated name (``split`` or ``split_generate``)."""

    run: str
    name: str
    pictures: list[Picture] = field(default_factory=list)

    @property
    def title(self) -> str:
        split, _, mode = self.name.partition("_")
        return f"{self.run}: {split} ({'generate' if mode else 'teacher'} mode)"

    def of(self, tag: str) -> list[Picture]:
        return [p for p in self.pictures if p.tag == tag]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "run"


def _thumbnail(source: Path, target: Path) -> None:
    with Image.open(source) as img:
        picture = img.convert("RGB")
    picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, format="JPEG", quality=JPEG_QUALITY, optimize=True)


def _clear(folder: Path) -> None:
    """Remove the thumbnails an earlier report wrote (only ``gallery/*/*/*.jpg``, then empty folders)."""
    if not folder.is_dir():
        return
    for stale in folder.glob("*/*/*.jpg"):
        stale.unlink()
    for sub in sorted((p for p in folder.glob("**/*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()


def make_galleries(summaries: list[Summary], out_dir: Path) -> tuple[list[Gallery], list[str]]:
    """Write the thumbnails of every run's pictures under ``out_dir/gallery/``.

    Returns (galleries, notes): one gallery per run and evaluated name with pictures, and the notes on runs
    without pictures (with the command that makes them), stale pictures and unreadable picture files.
    """
    root = out_dir / FOLDER
    _clear(root)
    galleries, notes = [], []
    for i, s in enumerate(summaries):
        info = s["pictures"]
        for name, entries in info["by_split"].items():
            gallery = Gallery(s["name"], name)
            for e in entries:
                source = Path(e["overlay_path"])
                thumb = root / f"{i + 1:02d}_{_safe(s['name'])}" / name / f"{e['tag']}_{e['rank']:02d}.jpg"
                try:
                    _thumbnail(source, thumb)
                except (OSError, ValueError, Image.DecompressionBombError) as exc:
                    notes.append(f"{s['name']}: picture {source.name} of eval_{name}_masks unreadable, left out "
                                 f"({exc})")
                    continue
                gallery.pictures.append(Picture(e["tag"], e["rank"], e["file"], e["query"], e["is_sentence"],
                                                e["iou"], thumb, source, thumb.relative_to(out_dir).as_posix(),
                                                relative_link(source, out_dir)))
            if gallery.pictures:
                galleries.append(gallery)
        for name in info["stale"]:
            notes.append(f"{s['name']}: the pictures of eval_{name}_masks/ do not match predictions_{name}.jsonl "
                         "(left by an earlier evaluation?); evaluate again with --save_masks to refresh them.")
        for name in info["without"]:
            split, _, mode = name.partition("_")
            command = HOW_TO.format(root=s["path"], split=split) + (" --mode generate" if mode else "")
            notes.append(f"{s['name']}: no best / worst pictures for {name}; make them with `{command}`.")
    return galleries, notes


def relative_link(target: Path, start: Path) -> str:
    """``target`` relative to the folder ``start`` with forward slashes (an absolute path on another drive)."""
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:
        return target.as_posix()
