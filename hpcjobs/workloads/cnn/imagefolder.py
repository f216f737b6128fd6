"""Index an image folder laid out as ``root/{train,validation[,test]}/<class>/*.png|jpg``.

The standard library only (no torch, no PIL): the login node runs :func:`scan` in ``preflight`` to
reject a malformed folder before anything is submitted. Every error names the path
and says what to change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hpcjobs.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "validation", "test")
# Names people use for the validation folder; only used to hint at the fix.
_VALIDATION_ALIASES = ("val", "valid", "validate", "dev")


@dataclass(frozen=True)
class ImageFolderIndex:
    root: Path
    classes: list[str]  # sorted class folder names of train/; the class index is the position
    # 'train'/'validation'/'test' -> (the image's path, its class index); the paths are text
    # (root/split/class/...): tens of thousands of Path objects would cost every run time
    splits: dict[str, list[tuple[str, int]]]
    test_is_validation: bool = False  # no test/ folder: the validation images are the test set

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _visible_children(folder: Path) -> list[Path]:
    # Hidden entries (.DS_Store, .ipynb_checkpoints) are never classes or images.
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _images(class_dir: Path) -> list[str]:
    """Image files under one class folder (subfolders included, not hidden ones, not through
    links to folders), in a stable order (Path's: component by component)."""
    found: list[tuple[tuple[str, ...], str]] = []

    # os.scandir, not rglob + is_file: the entries' types come with the listing, one system
    # call per folder rather than one per image. Paths as text, not Path objects: every run
    # scans (for the cache key), and at 20,000 images making Paths was half of a cache hit.
    def walk(folder: str, inside: tuple[str, ...]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, (*inside, name))
                elif os.path.splitext(name)[1].lower() in EXTENSIONS and entry.is_file():
                    found.append(((*inside, name), entry.path))

    walk(str(class_dir), ())
    found.sort()
    return [path for _, path in found]


def _class_dirs(split_dir: Path, root_label: str) -> list[Path]:
    children = _visible_children(split_dir)
    dirs = [p for p in children if p.is_dir()]
    if not dirs:
        loose = [p for p in children if p.suffix.lower() in EXTENSIONS]
        hint = (
            f" (found {len(loose)} images directly in {split_dir}:"
            " move them into one subfolder per class)"
        )
        raise DataError(
            f"{root_label}: {split_dir} has no class folders; expected {split_dir}/<class>/*.png,"
            f" one folder per class{hint if loose else ''}"
        )
    return dirs


def scan(root: str | Path) -> ImageFolderIndex:
    """List every image of every split with its class index; raise DataError if malformed."""
    root = Path(root).expanduser()
    label = f"data.root={root}"
    if not root.exists():
        raise DataError(
            f"{label}: no such directory; set data.root to"
            " the folder holding train/ and validation/"
        )
    if not root.is_dir():
        raise DataError(
            f"{label}: not a directory; set data.root to the folder holding train/ and validation/"
        )
    if not (root / "train").is_dir():
        raise DataError(f"{label}: no train/ folder; expected {root}/train/<class>/*.png")
    if not (root / "validation").is_dir():
        alias = next((a for a in _VALIDATION_ALIASES if (root / a).is_dir()), None)
        hint = f" (found {alias}/: rename it to validation/)" if alias else ""
        raise DataError(
            f"{label}: no validation/ folder; expected {root}/validation/<class>/*.png{hint}"
        )

    train_dirs = _class_dirs(root / "train", label)
    classes = [d.name for d in train_dirs]
    if len(classes) < 2:
        raise DataError(
            f"{label}: {root / 'train'} has only 1 class folder ({classes[0]}); a classifier needs"
            " at least 2: add one folder per class"
        )
    class_index = {name: i for i, name in enumerate(classes)}

    present = [s for s in SPLITS if (root / s).is_dir()]
    splits: dict[str, list[tuple[str, int]]] = {}
    empty: list[Path] = []
    for split in present:
        dirs = train_dirs if split == "train" else _class_dirs(root / split, label)
        for d in dirs:
            if d.name not in class_index:
                raise DataError(
                    f"{label}: {d} is class '{d.name}', which is not in {root / 'train'} (classes:"
                    f" {', '.join(classes)}); add {root / 'train' / d.name}/ or rename/remove {d}"
                )
        items: list[tuple[str, int]] = []
        for d in dirs:
            files = _images(d)
            if not files:
                empty.append(d)
            items += [(f, class_index[d.name]) for f in files]
        splits[split] = items
    if empty:
        listed = ", ".join(str(d) for d in empty)
        raise DataError(
            f"{label}: empty class folder(s) with no {'/'.join(EXTENSIONS)} images: {listed};"
            f" add images or remove the folder(s)"
        )

    test_is_validation = "test" not in splits
    if test_is_validation:
        log.warning("%s has no test/ folder: the validation images are also the test set", root)
        splits["test"] = splits["validation"]
    return ImageFolderIndex(
        root=root, classes=classes, splits=splits, test_is_validation=test_is_validation
    )
