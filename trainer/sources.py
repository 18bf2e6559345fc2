"""Where clips come from: readers for the audio and label layouts people have on disk.

Each reader returns a :class:`Source`: the audio files (absolute paths, stable order), each with its class
indices, and the class list in a stable order. Nothing is decoded here; :mod:`trainer.pack` decodes each
file once into a packed store. Layouts:

* :func:`audio_folder`: any folder of audio files (recursive), unlabeled, for pretraining;
* :func:`class_folders`: one sub-folder per class (single-label);
* :func:`csv_manifest`: ``path,labels`` rows, ``;`` between labels (multi-label allowed); a header
  ``path,labels,group`` adds a group per clip (e.g. the source recording, so that splits keep it on one side);
* :func:`desed`: DESED's metadata TSV, weak (``filename, event_labels``) or strong
  (``filename, onset, offset, event_label``), turned into clip labels;
* :func:`audioset`: AudioSet's segment CSV (``YTID, start_seconds, end_seconds, positive_labels``), files
  named by YTID, classes named through ``class_labels_indices.csv`` when given.

Entries that name a file which is not there, and every path a folder walk passed over (broken or looping symbolic
links, folders it could not list, formats soundfile cannot decode: :func:`augcl.audiofiles.scan_audio_files`), are
kept in ``Source.missing`` with the reason, so the pack report lists them.
"""
from __future__ import annotations

import csv
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from augcl.audiofiles import AUDIO_EXTENSIONS, scan_audio_files

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Item:
    """One audio file, its class indices (empty for unlabeled or event-free clips) and its group (clips of one
    source recording share a group; "" when the layout names none)."""

    path: str
    labels: tuple[int, ...] = ()
    group: str = ""


@dataclass(frozen=True)
class Source:
    """Files to read, the class list (stable order) and whether a clip may carry several labels."""

    items: tuple[Item, ...]
    classes: tuple[str, ...] = ()
    multi_label: bool = False
    missing: tuple[tuple[str, str], ...] = ()  # (entry, reason): named by metadata but not found, or passed over

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.items)


def _class_index(names: Iterable[str], classes: Optional[Sequence[str]], what: str) -> tuple[tuple[str, ...], dict]:
    """The class list (given, or sorted names seen) and a name -> index map; unknown names are an error."""
    seen = set(names)
    if classes is None:
        classes = sorted(seen)
    classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(seen - set(index))
    if unknown:
        raise ValueError(f"{what} names labels that are not in `classes`: {unknown[:5]}; add them to `classes` "
                         "or leave `classes=None` to take every label seen")
    return classes, index


def _require_file(path: PathLike, arg: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{arg} {str(path)!r} does not exist or is not a file")
    return path


def _require_dir(path: PathLike, arg: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{arg} {str(path)!r} does not exist or is not a directory")
    return path


def audio_folder(root: PathLike) -> Source:
    """Every audio file under ``root`` (recursive, sorted), unlabeled; the paths passed over in ``missing``."""
    root = _require_dir(root, "root")
    files, skipped = scan_audio_files(root)
    return Source(tuple(Item(str(p.resolve())) for p in files), missing=tuple(skipped))


def class_folders(root: PathLike) -> Source:
    """One sub-folder of ``root`` per class (sorted names); each file labeled by its top-level sub-folder."""
    root = _require_dir(root, "root")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"root {str(root)!r} has no sub-folders; class_folders expects one folder per class")
    items, missing = [], []
    for k, c in enumerate(classes):
        files, skipped = scan_audio_files(root / c)
        items.extend(Item(str(p.resolve()), (k,)) for p in files)
        missing.extend(skipped)
    return Source(tuple(items), classes, multi_label=False, missing=tuple(missing))


def _split_labels(field: str, sep: str) -> list[str]:
    return [s.strip() for s in (field or "").split(sep) if s.strip()]


def csv_manifest(path: PathLike, root: Optional[PathLike] = None, classes: Optional[Sequence[str]] = None,
                 multi_label: Optional[bool] = None) -> Source:
    """Rows ``path,labels`` (a header row naming ``path`` is skipped); ``;`` separates labels.

    A header ``path,labels,group`` (those names, in that order) reads a third column: the clip's group, such as
    its source recording (ESC-50's ``src_file``), which the probe's splits keep on one side. Relative paths are
    taken from ``root`` (default: the manifest's folder). ``multi_label=None`` means multi-label iff some row
    has more than one label. The manifest is UTF-8; a path that is not (bytes of another encoding) names the file
    with those bytes.
    """
    path = _require_file(path, "path")
    root = Path(root) if root is not None else path.parent
    rows, grouped = [], False
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if line_no == 1 and row[0].strip().lower() in ("path", "file", "filename"):
                grouped = [c.strip().lower() for c in row[1:3]] == ["labels", "group"]
                continue
            if len(row) < (3 if grouped else 2):
                want = "path,labels,group" if grouped else "path,labels"
                raise ValueError(f"manifest {str(path)!r} line {line_no}: expected `{want}`, got {row!r}")
            labels = row[1] if grouped else ",".join(row[1:])
            rows.append((row[0].strip(), _split_labels(labels, ";"), row[2].strip() if grouped else ""))
    return _labeled_source(rows, root, classes, multi_label, f"manifest {str(path)!r}")


def _labeled_source(rows: Sequence[tuple], root: Path, classes: Optional[Sequence[str]],
                    multi_label: Optional[bool], what: str) -> Source:
    """``rows``: ``(path, label names)`` or ``(path, label names, group)``."""
    classes, index = _class_index((lab for row in rows for lab in row[1]), classes, what)
    items, missing = [], []
    for rel, labs, *group in rows:
        p = Path(rel) if Path(rel).is_absolute() else root / rel
        if not p.is_file():
            missing.append((str(p), _not_a_file(p)))
            continue
        items.append(Item(str(p.resolve()), tuple(sorted({index[lab] for lab in labs})), *group))
    if multi_label is None:
        multi_label = any(len(row[1]) > 1 for row in rows)
    return Source(tuple(items), classes, bool(multi_label), tuple(missing))


def _not_a_file(p: Path) -> str:
    """Why ``p``, named by metadata, is not a file it can read."""
    if p.is_dir():
        return "a folder, not a file"
    if p.is_symlink():
        try:
            p.stat()
        except OSError as e:
            return "symbolic link loop" if e.errno == errno.ELOOP else f"broken symbolic link -> {os.readlink(p)}"
    return "file not found" if not p.exists() else "not a regular file"


def desed(tsv: PathLike, audio_dir: PathLike, classes: Optional[Sequence[str]] = None) -> Source:
    """DESED metadata: weak (``filename  event_labels``, comma-separated) or strong
    (``filename  onset  offset  event_label``, one row per event); a clip's labels are the union of its
    events. A strong row with an empty label is a clip without events. Multi-label."""
    tsv = _require_file(tsv, "tsv")
    audio_dir = _require_dir(audio_dir, "audio_dir")
    with open(tsv, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [h.strip() for h in next(reader, [])]
        body = [r for r in reader if r and r[0].strip()]
    if "filename" not in header:
        raise ValueError(f"tsv {str(tsv)!r}: DESED metadata starts with a header naming `filename`, got {header}")
    fcol = header.index("filename")
    if "event_labels" in header:
        lcol, sep = header.index("event_labels"), ","
    elif "event_label" in header:
        lcol, sep = header.index("event_label"), None
    else:
        raise ValueError(f"tsv {str(tsv)!r}: header needs `event_labels` (weak) or `event_label` (strong), "
                         f"got {header}")
    labels: dict[str, set] = {}
    for r in body:
        field = r[lcol] if lcol < len(r) else ""
        labs = _split_labels(field, sep) if sep else [field.strip()] if field.strip() else []
        labels.setdefault(r[fcol].strip(), set()).update(labs)
    rows = [(name, sorted(labs)) for name, labs in labels.items()]
    return _labeled_source(rows, audio_dir, classes, True, f"tsv {str(tsv)!r}")


def _ytid_keys(stem: str) -> list[str]:
    """Names under which a file may be found: YTIDs are 11 characters; dumps name files ``YTID``,
    ``YTID_start_end`` or ``Y`` + either."""
    keys = [stem]
    if len(stem) > 11 and stem[11] == "_":
        keys.append(stem[:11])
    if stem.startswith("Y") and (len(stem) == 12 or (len(stem) > 12 and stem[12] == "_")):
        keys.append(stem[1:12])
    return keys


def audioset(csv_path: PathLike, audio_dir: PathLike, class_index_csv: Optional[PathLike] = None) -> Source:
    """AudioSet segments: ``YTID, start_seconds, end_seconds, "mid,mid,..."`` (``#`` lines are comments).

    With ``class_index_csv`` (``index,mid,display_name``, AudioSet's ``class_labels_indices.csv``) the classes
    are its display names in its order; labels not in it are dropped, and so are segments left without a label
    (a class index with 10 rows selects a 10-class subset). Without it, the classes are the sorted mids seen.
    Multi-label.
    """
    csv_path = _require_file(csv_path, "csv_path")
    audio_dir = _require_dir(audio_dir, "audio_dir")
    files: dict[str, Path] = {}
    found, skipped = scan_audio_files(audio_dir)
    for p in found:
        for key in _ytid_keys(p.stem):
            files.setdefault(key, p)
    rows = []
    with open(csv_path, newline="") as f:
        for line_no, r in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not r or r[0].startswith("#"):
                continue
            if len(r) < 4:
                raise ValueError(f"csv_path {str(csv_path)!r} line {line_no}: expected "
                                 f"`YTID, start_seconds, end_seconds, positive_labels`, got {r!r}")
            rows.append((r[0].strip(), _split_labels(r[3], ",")))
    names = None
    if class_index_csv is not None:
        with open(_require_file(class_index_csv, "class_index_csv"), newline="") as f:
            table = [r for r in csv.DictReader(f)]
        if not table or not {"mid", "display_name"} <= set(table[0]):
            raise ValueError(f"class_index_csv {str(class_index_csv)!r} needs columns index,mid,display_name")
        table.sort(key=lambda r: int(r["index"]))
        mids = [r["mid"] for r in table]
        names = {r["mid"]: r["display_name"] for r in table}
    else:
        mids = None
    if mids is not None:  # a class index selects the classes: other labels are dropped, clips without any too
        rows = [(ytid, [m for m in ms if m in names]) for ytid, ms in rows]
        rows = [(ytid, ms) for ytid, ms in rows if ms]
    classes, index = _class_index((m for _, ms in rows for m in ms), mids, f"csv_path {str(csv_path)!r}")
    items, missing = [], list(skipped)
    for ytid, ms in rows:
        p = files.get(ytid)
        if p is None:
            missing.append((ytid, f"no audio file for this YTID in {str(audio_dir)!r}"))
            continue
        items.append(Item(str(p.resolve()), tuple(sorted({index[m] for m in ms}))))
    if names is not None:
        classes = tuple(names[m] for m in classes)
    return Source(tuple(items), classes, True, tuple(missing))


LAYOUTS = ("auto", "none", "folders", "csv", "desed", "audioset")


def open_source(src: PathLike, labels: str = "auto", audio_dir: Optional[PathLike] = None,
                class_index_csv: Optional[PathLike] = None) -> Source:
    """The reader for ``src`` by ``labels`` (one of :data:`LAYOUTS`).

    ``auto``: a folder is unlabeled audio; a ``.tsv`` is DESED; a ``.csv`` whose first non-comment row
    has four or more fields and a 11-character first field (or a ``# YTID`` header) is AudioSet, any other
    ``.csv`` a manifest. DESED and AudioSet need ``audio_dir``.
    """
    if labels not in LAYOUTS:
        raise ValueError(f"labels must be one of {LAYOUTS}, got {labels!r}")
    src = Path(src)
    if not src.exists():
        raise ValueError(f"src {str(src)!r} does not exist")
    if labels == "auto":
        if src.is_dir():
            labels = "none"
        elif src.suffix.lower() == ".tsv":
            labels = "desed"
        elif src.suffix.lower() == ".csv":
            labels = "audioset" if _looks_like_audioset(src) else "csv"
        elif src.suffix.lower() in AUDIO_EXTENSIONS:
            raise ValueError(f"src {str(src)!r} is one audio file; pass its folder")
        else:
            raise ValueError(f"src {str(src)!r}: cannot tell the layout; pass labels= one of {LAYOUTS[1:]}")
    if labels == "none":
        return audio_folder(src)
    if labels == "folders":
        return class_folders(src)
    if labels == "csv":
        return csv_manifest(src, root=audio_dir)
    if audio_dir is None:
        raise ValueError(f"labels={labels!r} needs audio_dir, the folder holding the clips")
    if labels == "desed":
        return desed(src, audio_dir)
    return audioset(src, audio_dir, class_index_csv)


def _looks_like_audioset(path: Path) -> bool:
    with open(path, newline="") as f:
        for r in csv.reader(f, skipinitialspace=True):
            if not r:
                continue
            if r[0].startswith("#"):
                if "YTID" in r[0]:
                    return True
                continue
            return len(r) >= 4 and len(r[0].strip()) == 11
    return False
