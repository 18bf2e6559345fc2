"""Which files are audio, and a folder walk that says what it skipped.

* :data:`AUDIO_EXTENSIONS`: the file name extensions of every format this soundfile (libsndfile) decodes, derived
  from ``soundfile.available_formats()`` (MP3 with libsndfile >= 1.1, Opus in Ogg with >= 1.0.29). soundfile
  decodes by content, so the extension only decides which files are tried.
* :func:`scan_audio_files`: the audio files under a folder, sorted, and every path skipped on the way with the
  reason: broken symbolic links, link loops, folders that cannot be listed, links to a file or folder listed
  already, audio files in a format this soundfile cannot decode (``.m4a``, ``.wma``, ...; headerless ``.raw`` and
  ``.pcm``). Symbolic links are followed, each real folder is listed once, so a link to an enclosing folder is
  reported, not walked forever. Other files (``.txt``, ``.csv``, ``.json``, ``.mat``) are ignored.

Cost: one ``scandir`` per folder and one ``stat`` per entry; nothing is opened.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Union

import soundfile as sf

# soundfile format name -> the extensions its files go by (a format not named here goes by its lower-cased name)
_FORMAT_EXTENSIONS = {
    "AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"), "IRCAM": (".sf", ".ircam"),
    "MP3": (".mp3", ".mp2", ".mp1", ".mpga", ".m1a"), "MPC2K": (".mpc",), "NIST": (".nist", ".sph"),
    "OGG": (".ogg", ".oga"), "SVX": (".svx", ".8svx", ".16sv", ".iff"), "WAV": (".wav", ".wave"),
    "WAVEX": (".wav",),
    # left out: RAW has no header, so nothing to decode by content; a .mat (MAT4, MAT5) is almost always Matlab
    # data, not audio
    "RAW": (), "MAT4": (), "MAT5": (),
}

# extensions of audio this soundfile may not decode: such a file is reported, never dropped unseen
_OTHER_AUDIO = (".m4a", ".aac", ".mp4", ".wma", ".ape", ".wv", ".alac", ".amr", ".ac3", ".dsf", ".mka", ".webm",
                ".mp3", ".opus")
_HEADERLESS = (".raw", ".pcm")


def _extensions() -> tuple[str, ...]:
    exts = []
    for name in sf.available_formats():
        exts.extend(_FORMAT_EXTENSIONS.get(name, ("." + name.lower(),)))
    if "OGG" in sf.available_formats() and "OPUS" in sf.available_subtypes("OGG"):
        exts.append(".opus")
    return tuple(dict.fromkeys(exts))


#: extensions of the files :func:`scan_audio_files` lists (lower case, with the dot)
AUDIO_EXTENSIONS: tuple[str, ...] = _extensions()
_UNDECODED = {**{e: f"{e} files are not decoded by this soundfile (libsndfile {sf.__libsndfile_version__}); "
                    "convert them to flac or wav" for e in _OTHER_AUDIO if e not in AUDIO_EXTENSIONS},
              **{e: "headerless audio: nothing says its sample rate or encoding; convert it to flac or wav"
                 for e in _HEADERLESS}}


def scan_audio_files(folder: Union[str, Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """``(files, skipped)``: audio files under ``folder`` (recursive, sorted, so an order is stable) and
    ``(path, reason)`` for every path passed over (module docstring). Symbolic links to audio files are listed;
    a file or folder reached twice (through links) is listed once, under its first path, the others reported.
    Folders are walked before the folders that links lead to, so a link never hides the real path."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder {str(root)!r} does not exist or is not a directory")
    found: list[tuple[Path, str, bool]] = []  # (path, real path, reached through a file link)
    skipped: list[tuple[str, str]] = []
    listed: dict[str, str] = {}  # real folder -> the path it was listed under
    links: list[Path] = []  # links to folders: walked after the folders themselves

    def walk(top: Path) -> None:
        stack = [top]
        while stack:
            d = stack.pop()
            real = os.path.realpath(d)
            if real in listed:
                skipped.append((str(d), f"symbolic link to a folder listed already ({listed[real]}); "
                                         "not followed again"))
                continue
            listed[real] = str(d)
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                skipped.append((str(d), f"cannot list this folder: {e.strerror}"))
                continue
            subdirs = []
            for e in entries:
                path = d / e.name
                is_link = e.is_symlink()
                try:
                    st = os.stat(path)  # follows links
                except OSError as err:
                    skipped.append((str(path), _stat_failure(path, err, is_link)))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    (links if is_link else subdirs).append(path)
                    continue
                ext = os.path.splitext(e.name)[1].lower()
                if ext in AUDIO_EXTENSIONS:
                    if not stat.S_ISREG(st.st_mode):
                        skipped.append((str(path), "not a regular file (a pipe, socket or device)"))
                    else:
                        found.append((path, os.path.realpath(path) if is_link else os.path.join(real, e.name),
                                      is_link))
                elif ext in _UNDECODED:
                    skipped.append((str(path), _UNDECODED[ext]))
            stack.extend(reversed(subdirs))

    walk(root)
    while links:
        walk(links.pop(0))
    files, first = [], {}
    for path, real, via_link in sorted(found, key=lambda f: (f[2], f[0])):  # real paths before links
        if real in first:
            skipped.append((str(path), f"symbolic link to a file listed already ({first[real]})"))
            continue
        first[real] = str(path)
        files.append(path)
    return sorted(files), skipped


def _stat_failure(path: Path, err: OSError, is_link: bool) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if is_link and err.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"broken symbolic link -> {os.readlink(path)}"
    return f"cannot read: {err.strerror}"
