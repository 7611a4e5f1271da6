"""Checkpoint registry, verified download, and clear errors when a file is missing.

Every real checkpoint segprompt knows (SAM ViT-B/L/H, MedSAM, SAM 2 / 2.1 Hiera t/s/b+/l,
MedSAM2, CLIPSeg, open_clip models including BiomedCLIP) is a :class:`WeightsEntry` in the :data:`WEIGHTS` registry, with its
source and, where the file is fixed, its SHA-256. Nothing downloads at import time or behind
the user's back:

* :func:`find_weights` turns a name (``"sam_vit_b"``), a bare registered file name
  (``"sam_vit_b_01ec64.pth"``) or an existing path into a local path, or raises a
  :class:`~segprompt.errors.WeightsError` that says which file is missing, where to download it
  from, the exact path to put it at, and the command that does it for you;
* :func:`fetch` (``segprompt weights fetch NAME``) downloads it: streamed to a temp file in the
  destination folder, hashed while streaming, compared, then renamed into place atomically.
  A checksum mismatch, a cut transfer or a network error leaves no final file behind.

Layout: ``home()`` is ``$SEGPROMPT_HOME`` or the user cache folder
(``platformdirs.user_cache_dir("segprompt")``); checkpoints live in ``home()/checkpoints/``:
a single file per URL entry (plus a small ``<file>.sha256.json`` marker written after
verification, so a 2.5 GB file is hashed once, not at every start), and one folder per
Hugging Face Hub entry (a snapshot, or a ``git clone`` of the repository placed there by hand).

Adding your own checkpoint (a finetuned model on your lab server)::

    from segprompt.weights import WeightsEntry, register_weights
    register_weights(WeightsEntry(
        name="my-sam", family="sam", source="url", url="https://lab.example/my_sam.pth",
        filename="my_sam.pth", sha256="<64 hex digits>", architecture="vit_b"))
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from segprompt.errors import ConfigError, WeightsError
from segprompt.registry import Registry

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FAMILIES = ("sam", "sam2", "clipseg", "open_clip")
SOURCES = ("url", "hf-hub", "open_clip")

#: seconds to wait for the server to answer / between two received blocks
DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20  # 1 MiB
_MARKER_SUFFIX = ".sha256.json"
_PARTIAL_PREFIX = "."  # temp files and folders are hidden: ".<name>.<random>.part"
_USER_AGENT = "segprompt-weights/0.1 (+https://github.com; python-urllib)"


# ----------------------------------------------------------------------------------------
# Entries and registry
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsEntry:
    """One named checkpoint: where it comes from, how to check it, what it is.

    name:          registry name (``_`` and ``-`` are equivalent, case-insensitive).
    family:        ``"sam"``, ``"sam2"``, ``"clipseg"`` or ``"open_clip"``: which loader reads it.
    source:        ``"url"`` (one file at ``url``), ``"hf-hub"`` (a Hugging Face Hub repository
                   ``repo_id``, fetched as a folder) or ``"open_clip"`` (one file at ``url``
                   that open_clip loads as ``create_model(model, pretrained=<path>)``).
    url:           download URL (``url`` and ``open_clip`` sources; ``file://`` works too).
    repo_id:       Hub repository id (``hf-hub`` source), e.g. ``"CIDAS/clipseg-rd64"``.
    filename:      local file name (or folder name for ``hf-hub``) under ``home()/checkpoints``.
    sha256:        expected SHA-256 of the file (lower-case hex), or None where not fixed
                   (Hub repositories, user entries without a checksum).
    size_bytes:    approximate size, for messages and the disk-space check (None: unknown).
    architecture:  e.g. ``"vit_b"``; for SAM, the ``sam_model_registry`` key; for SAM 2, a
                   :data:`segprompt.models.sam2_build.ARCHS` name (``"sam2.1_hiera_t512"``).
    license:       licence of the weights (SPDX id where there is one).
    citation:      paper or source to cite.
    notes:         anything else (provenance of the checksum, how to load it).
    model:         open_clip model name to create, e.g. ``"ViT-B-16"`` (open_clip family).
    pretrained:    open_clip pretrained tag the file corresponds to, e.g. ``"openai"``.
    check_files:   for Hub folders: files that must exist inside for it to count as present.
    """

    name: str
    family: str
    source: str
    filename: str
    url: str | None = None
    repo_id: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    architecture: str = ""
    license: str = ""
    citation: str = ""
    notes: str = ""
    model: str | None = None
    pretrained: str | None = None
    check_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"weights entry {self.name!r}"
        if not self.name or not self.name.strip():
            raise ConfigError("a weights entry needs a name")
        if self.family not in FAMILIES:
            raise ConfigError(f"{where}: family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.source not in SOURCES:
            raise ConfigError(f"{where}: source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source in ("url", "open_clip") and not self.url:
            raise ConfigError(f"{where}: source {self.source!r} needs a url")
        if self.source == "hf-hub" and not self.repo_id:
            raise ConfigError(f"{where}: source 'hf-hub' needs a repo_id such as 'CIDAS/clipseg-rd64'")
        if not self.filename or Path(self.filename).name != self.filename or self.filename in (".", ".."):
            raise ConfigError(f"{where}: filename {self.filename!r} must be a plain file name, not a path")
        if self.sha256 is not None:
            digest = self.sha256.strip().lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"{where}: sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        object.__setattr__(self, "check_files", tuple(self.check_files))

    @property
    def is_folder(self) -> bool:
        """True for Hub entries, stored as a folder rather than one file."""
        return self.source == "hf-hub"

    @property
    def location(self) -> str:
        """Where it comes from: the URL, or ``hf-hub:<repo>``."""
        return self.url if self.url else f"hf-hub:{self.repo_id}"


WEIGHTS: Registry[WeightsEntry] = Registry("weights")


def register_weights(entry: WeightsEntry, *aliases: str, replace: bool = False) -> WeightsEntry:
    """Add ``entry`` to :data:`WEIGHTS` (``replace=True`` overwrites an entry of that name)."""
    if not isinstance(entry, WeightsEntry):
        raise ConfigError(f"register_weights expects a WeightsEntry, got {type(entry).__name__}")
    if replace and entry.name in WEIGHTS:
        unregister_weights(entry.name)
    WEIGHTS.add(entry.name, entry, *aliases)
    return entry


def unregister_weights(name: str) -> None:
    """Remove an entry and its aliases (for tests and for user entries that changed)."""
    key = WEIGHTS.resolve(name)
    # Registry has no public removal; this module owns WEIGHTS, so it edits its tables.
    WEIGHTS._items.pop(key, None)
    for alias in [a for a, target in WEIGHTS._aliases.items() if target == key]:
        del WEIGHTS._aliases[alias]


def get_entry(name: str) -> WeightsEntry:
    """The entry registered as ``name``; unknown names raise ConfigError with a suggestion."""
    return WEIGHTS.get(name)


def list_weights() -> list[WeightsEntry]:
    return [entry for _, entry in WEIGHTS.items()]


def entry_for(name_or_path: PathLike) -> WeightsEntry | None:
    """The registry entry a name or a checkpoint path stands for (by name, else by file name), or None.

    Lets a loader read what a file cannot say about itself (e.g. MedSAM2's 512 px input).
    """
    text = os.fspath(name_or_path)
    if text in WEIGHTS:
        return get_entry(text)
    return _entry_by_filename(Path(text).name)


def _entry_by_filename(filename: str) -> WeightsEntry | None:
    for entry in list_weights():
        if entry.filename == filename:
            return entry
    return None


# --- the built-in entries ---------------------------------------------------------------

_SAM_CITATION = "Kirillov et al., Segment Anything, ICCV 2023 (arXiv:2304.02643)"
_SAM_NOTES = (
    "Official Meta checkpoint (facebookresearch/segment-anything README). SHA-256 and size as "
    "pinned in micro-sam's model registry (computational-cell-analytics/micro-sam, "
    "micro_sam/util.py) and 3D Slicer's SegmentAnything extension, and by many other projects."
)

# SHA-256 sources, checked 2025: computational-cell-analytics/micro-sam micro_sam/util.py
# (pooch registry "vit_h"/"vit_l"/"vit_b"), the 3D Slicer SAM extension
# (downloadFileIntoCache(..., "SHA256:...") for vit_h and vit_l), and several independent
# model-zoo tables that also list the exact sizes below.
_BUILTIN: list[tuple[WeightsEntry, tuple[str, ...]]] = [
    (
        WeightsEntry(
            name="sam_vit_b",
            family="sam",
            source="url",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
            architecture="vit_b",
            license="Apache-2.0",
            citation=_SAM_CITATION,
            notes=_SAM_NOTES,
        ),
        ("sam-b", "vit_b"),
    ),
    (
        WeightsEntry(
            name="sam_vit_l",
            family="sam",
            source="url",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_bytes=1_249_524_607,
            architecture="vit_l",
            license="Apache-2.0",
            citation=_SAM_CITATION,
            notes=_SAM_NOTES,
        ),
        ("sam-l", "vit_l"),
    ),
    (
        WeightsEntry(
            name="sam_vit_h",
            family="sam",
            source="url",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2_564_550_879,
            architecture="vit_h",
            license="Apache-2.0",
            citation=_SAM_CITATION,
            notes=_SAM_NOTES,
        ),
        ("sam-h", "vit_h"),
    ),
    (
        # MedSAM: the authors distribute the file through Google Drive (MedSAM README); the
        # Zenodo record below is the download URL used by many downstream projects. The
        # SHA-256 (and MD5 3bb6db55bd0c9ca30b61248bca72f8d6, size 375,049,145) agree across
        # several independent public projects; it is not published by the authors themselves.
        WeightsEntry(
            name="medsam_vit_b",
            family="sam",
            source="url",
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1",
            filename="medsam_vit_b.pth",
            sha256="34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
            size_bytes=375_049_145,
            architecture="vit_b",
            license="Apache-2.0",
            citation="Ma et al., Segment Anything in Medical Images, Nature Communications 15:654 (2024)",
            notes=(
                "SAM ViT-B finetuned on 1.5M medical image-mask pairs; box prompts. Checksum "
                "as recorded by independent public projects (official copy: Google Drive link "
                "in bowang-lab/MedSAM)."
            ),
        ),
        ("medsam",),
    ),
    (
        WeightsEntry(
            name="clipseg-rd64-refined",
            family="clipseg",
            source="hf-hub",
            repo_id="CIDAS/clipseg-rd64-refined",
            filename="clipseg-rd64-refined",
            size_bytes=603_000_000,
            architecture="vit_b_16-rd64-refined",
            license="Apache-2.0",
            citation="Lüddecke & Ecker, Image Segmentation Using Text and Image Prompts, CVPR 2022",
            notes="Load with transformers CLIPSegForImageSegmentation.from_pretrained(<folder>).",
            check_files=("config.json",),
        ),
        ("clipseg",),
    ),
    (
        WeightsEntry(
            name="clipseg-rd64",
            family="clipseg",
            source="hf-hub",
            repo_id="CIDAS/clipseg-rd64",
            filename="clipseg-rd64",
            size_bytes=603_000_000,
            architecture="vit_b_16-rd64",
            license="Apache-2.0",
            citation="Lüddecke & Ecker, Image Segmentation Using Text and Image Prompts, CVPR 2022",
            notes="Load with transformers CLIPSegForImageSegmentation.from_pretrained(<folder>).",
            check_files=("config.json",),
        ),
        (),
    ),
    (
        # OpenAI publishes the SHA-256 as the second-to-last URL component (openai/CLIP
        # clip/clip.py: ``expected_sha256 = url.split("/")[-2]``); open_clip uses the same URL.
        WeightsEntry(
            name="openclip-vit-b-16-openai",
            family="open_clip",
            source="open_clip",
            url=(
                "https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
            ),
            filename="openai_ViT-B-16.pt",
            sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            size_bytes=351_000_000,
            architecture="ViT-B-16",
            license="MIT",
            citation="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
            notes="Load with open_clip.create_model('ViT-B-16', pretrained=<file>) (TorchScript archive).",
            model="ViT-B-16",
            pretrained="openai",
        ),
        ("clip-vit-b-16",),
    ),
    (
        WeightsEntry(
            name="biomedclip",
            family="open_clip",
            source="hf-hub",
            repo_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            filename="biomedclip",
            size_bytes=784_000_000,
            architecture="ViT-B-16/PubMedBERT_256",
            license="MIT",
            citation="Zhang et al., BiomedCLIP, arXiv:2303.00915 (2023)",
            notes=(
                "An open_clip model: open_clip.create_model_from_pretrained('local-dir:<folder>') "
                "(or 'hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224' online)."
            ),
            model="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            check_files=("open_clip_config.json",),
        ),
        (),
    ),
]

# SAM 2 (2024-07-29 release, "072824") and SAM 2.1 (2024-09-29, "092824"): URLs as in
# facebookresearch/sam2 checkpoints/download_ckpts.sh; each file is {"model": state_dict}.
# Meta publishes no SHA-256 for these files and none was found in a source we could read, so
# sha256 is None: `segprompt weights fetch` logs the hash it computed, and the file is not
# verified against a pinned value. Sizes are approximate (for messages and the disk check).
_SAM2_CITATION = "Ravi et al., SAM 2: Segment Anything in Images and Videos, ICLR 2025 (arXiv:2408.00714)"
_SAM2_NOTES = (
    "Official Meta checkpoint (facebookresearch/sam2 README); no published SHA-256, so it is not "
    "verified. Loads with create_segmenter('sam2', checkpoint=...), the configuration read from its keys."
)
_SAM2_SIZES = {"tiny": ("t", 156_000_000), "small": ("s", 185_000_000), "base_plus": ("b+", 324_000_000), "large": ("l", 898_000_000)}
for _version, _stamp in (("sam2", "072824"), ("sam2.1", "092824")):
    for _long, (_short, _size) in _SAM2_SIZES.items():
        _BUILTIN.append(
            (
                WeightsEntry(
                    name=f"{_version}_hiera_{_long}",
                    family="sam2",
                    source="url",
                    url=f"https://dl.fbaipublicfiles.com/segment_anything_2/{_stamp}/{_version}_hiera_{_long}.pt",
                    filename=f"{_version}_hiera_{_long}.pt",
                    size_bytes=_size,
                    architecture=f"{_version}_hiera_{_short}",
                    license="Apache-2.0",
                    citation=_SAM2_CITATION,
                    notes=_SAM2_NOTES,
                ),
                (f"{_version}-{_short}",),
            )
        )
_BUILTIN.append(
    (
        # MedSAM2: the authors' download script (bowang-lab/MedSAM2 checkpoints/
        # download_medsam2_models.py) fetches it from the Hub repository wanglab/MedSAM2; their
        # inference scripts build it with configs/sam2.1_hiera_t512.yaml (sam2.1 hiera_t at 512 px).
        # No SHA-256 is published; the file changes when the authors update "latest".
        WeightsEntry(
            name="medsam2_latest",
            family="sam2",
            source="url",
            url="https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt",
            filename="MedSAM2_latest.pt",
            size_bytes=156_000_000,
            architecture="sam2.1_hiera_t512",
            license="Apache-2.0",
            citation="Ma et al., MedSAM2: Segment Anything in 3D Medical Images and Videos, arXiv:2504.03600 (2025)",
            notes=(
                "SAM 2.1 hiera_t finetuned on 3-D medical images and videos, run at 512 px; "
                "box prompts on a key slice, then propagation. No published SHA-256 (not verified)."
            ),
        ),
        ("medsam2",),
    )
)
del _version, _stamp, _long, _short, _size

for _entry, _aliases in _BUILTIN:
    register_weights(_entry, *_aliases)
del _entry, _aliases


# ----------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------


def home() -> Path:
    """segprompt's cache root: ``$SEGPROMPT_HOME``, else the platform's user cache folder."""
    env = os.environ.get("SEGPROMPT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("segprompt"))


def checkpoints_dir() -> Path:
    return home() / "checkpoints"


def weights_path(name: str) -> Path:
    """The local path where weights ``name`` are expected, whether present or not."""
    return checkpoints_dir() / get_entry(name).filename


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def is_present(name: str) -> bool:
    """Whether the weights are on disk (cheap: no hashing)."""
    entry = get_entry(name)
    return _folder_complete(entry, weights_path(name)) if entry.is_folder else weights_path(name).is_file()


# ----------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------


def _hash_file(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = _progress_bar(size, f"sha256 {path.name}", progress and size > 64 * _CHUNK)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
                bar.update(len(block))
    finally:
        bar.close()
    return digest.hexdigest()


@functools.lru_cache(maxsize=512)
def _hash_cached(path: str, size: int, mtime_ns: int) -> str:
    return _hash_file(Path(path))


def _read_marker(path: Path, st: os.stat_result) -> str | None:
    """The SHA-256 recorded next to ``path`` if the marker still describes this file."""
    try:
        data = json.loads(_marker_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("size") != st.st_size or data.get("mtime_ns") != st.st_mtime_ns:
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def _write_marker(path: Path, digest: str) -> None:
    st = path.stat()
    record = {"file": path.name, "sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = _marker_path(path)
    try:
        tmp = marker.with_name(f"{_PARTIAL_PREFIX}{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, marker)
    except OSError as exc:  # a read-only shared cache: verification just happens again later
        log.debug("could not write checksum marker %s: %s", marker, exc)


def sha256_file(path: PathLike) -> str:
    """SHA-256 (hex) of a file, memoised by (path, size, mtime_ns).

    A valid ``<file>.sha256.json`` marker written by :func:`fetch` / :func:`find_weights`
    (same size and modification time) is trusted, so a 2.5 GB checkpoint is hashed once.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise WeightsError(f"cannot hash {p}: {exc.strerror or exc}") from exc
    if not p.is_file():
        raise WeightsError(f"cannot hash {p}: not a file (use weights_fingerprint() for a folder)")
    recorded = _read_marker(p, st)
    if recorded is not None:
        return recorded
    return _hash_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def weights_fingerprint(path: PathLike) -> str:
    """A SHA-256 identifying a checkpoint file or a checkpoint folder (e.g. a Hub snapshot).

    For a folder: the hash of the sorted (relative path, file SHA-256) pairs of its files,
    hidden files and folders (``.git``, ``.cache``) excluded.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        raise WeightsError(f"cannot fingerprint {p}: no such file or folder")
    digest = hashlib.sha256()
    for file in sorted(_visible_files(p)):
        digest.update(file.relative_to(p).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def _visible_files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and not name.endswith(_MARKER_SUFFIX):
                yield Path(root) / name


def verify(path: PathLike, sha256: str) -> bool:
    """Hash ``path`` in chunks (no memo, no marker) and compare with ``sha256``."""
    return _hash_file(Path(path).expanduser()) == sha256.strip().lower()


# ----------------------------------------------------------------------------------------
# Finding
# ----------------------------------------------------------------------------------------


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith("~")
        or Path(text).suffix.lower() in (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".onnx")
    )


def _missing_message(entry: WeightsEntry, path: Path) -> str:
    size = f", ~{human_size(entry.size_bytes)}" if entry.size_bytes else ""
    if entry.is_folder:
        return (
            f"weights {entry.name!r} (Hugging Face Hub repository {entry.repo_id}{size}) are missing: "
            f"run `segprompt weights fetch {entry.name}`, or offline put a clone at {path} "
            f"(git clone https://huggingface.co/{entry.repo_id} {path}, with git-lfs installed)"
        )
    return (
        f"checkpoint file {entry.filename} ({entry.name}{size}) is missing: download it from "
        f"{entry.url} and put it at {path}, or run `segprompt weights fetch {entry.name}`"
    )


def _lfs_pointers(folder: Path) -> list[Path]:
    """Weight files in ``folder`` that are git-lfs pointer stubs (cloned without git-lfs)."""
    found = []
    for file in _visible_files(folder):
        if file.suffix in (".bin", ".safetensors", ".pt", ".pth", ".ckpt") and file.stat().st_size < 1024:
            with open(file, "rb") as handle:
                if handle.read(40).startswith(b"version https://git-lfs"):
                    found.append(file)
    return found


def _folder_complete(entry: WeightsEntry, path: Path) -> bool:
    if not path.is_dir():
        return False
    if entry.check_files:
        return all((path / name).is_file() for name in entry.check_files)
    return any(True for _ in _visible_files(path))


def _check_file(entry: WeightsEntry, path: Path, verify_checksum: bool) -> Path:
    """Return ``path`` if it holds ``entry``'s file, verifying the checksum once."""
    if entry.sha256 is None or not verify_checksum:
        return path
    st = path.stat()
    if _read_marker(path, st) == entry.sha256:
        return path
    size = st.st_size
    log.info("verifying %s (first use; the result is remembered)", path)
    actual = _hash_file(path, progress=True)
    if actual != entry.sha256:
        raise WeightsError(
            f"checkpoint file {path} does not match the checksum of {entry.name} "
            f"(expected sha256 {entry.sha256}, got {actual}, {human_size(size)}): it is corrupt, "
            f"incomplete or a different file; delete it and run `segprompt weights fetch "
            f"{entry.name}`, or put a good copy from {entry.url} there"
        )
    _write_marker(path, actual)
    return path


def find_weights(name_or_path: PathLike, verify_checksum: bool = True) -> Path:
    """Local path of a checkpoint given by registry name, registered file name or path.

    * an existing file or folder passes through unchanged (a relative path that is also a
      registry name counts as the name: write ``./biomedclip`` for a local folder of that name);
    * a registry name (``"sam_vit_b"``) or a registered file name (``"sam_vit_b_01ec64.pth"``)
      resolves to ``weights_path(name)`` if it is there; a file with a fixed SHA-256 is hashed
      once (then a marker remembers it) and a mismatch raises :class:`WeightsError`;
    * otherwise :class:`WeightsError` says which file is missing, where to download it,
      where to put it and which command fetches it. Unknown names raise ConfigError.
    """
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    registered = text in WEIGHTS
    if text and (not registered or _looks_like_path(text)) and candidate.exists():
        return candidate
    if registered:
        entry = get_entry(text)
    else:
        entry = _entry_by_filename(candidate.name) if _looks_like_path(text) else None
        if entry is None:
            if _looks_like_path(text):
                raise WeightsError(
                    f"checkpoint {text} not found: there is no such file, and it is not a "
                    f"registered weights name (see `segprompt weights list`; known: "
                    f"{', '.join(e.name for e in list_weights())})"
                )
            entry = get_entry(text)  # raises ConfigError with the closest known name
    path = checkpoints_dir() / entry.filename
    if entry.is_folder:
        if _folder_complete(entry, path):
            stubs = _lfs_pointers(path)
            if stubs:
                raise WeightsError(
                    f"weights {entry.name!r} at {path} hold git-lfs pointers instead of weights "
                    f"({stubs[0].name}); run `git lfs pull` in that folder, or "
                    f"`segprompt weights fetch {entry.name} --force`"
                )
            return path
        raise WeightsError(_missing_message(entry, path))
    if path.is_file():
        return _check_file(entry, path, verify_checksum)
    raise WeightsError(_missing_message(entry, path))


# ----------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------


def _progress_bar(total: int | None, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    stream = sys.stderr
    show = enabled and hasattr(stream, "isatty") and stream.isatty()
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show, leave=False
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _reason(reason)
        return str(reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def fetch(
    name: str,
    force: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download weights ``name`` into ``home()/checkpoints`` and verify them; return the path.

    Already there and verified: nothing is downloaded (``force=True`` downloads again).
    A file is streamed to a hidden temp file in the same folder while its SHA-256 is
    computed, compared with the registry, then renamed into place (atomic); any failure
    (network, checksum, interruption) removes the temp file and raises WeightsError.
    Hub entries use ``huggingface_hub.snapshot_download``.
    """
    entry = get_entry(name)
    dest = checkpoints_dir() / entry.filename
    if entry.is_folder:
        return _fetch_hub(entry, dest, force)
    if dest.is_file() and not force:
        if entry.sha256 is None:
            return dest
        try:
            return _check_file(entry, dest, verify_checksum=True)
        except WeightsError as exc:
            log.warning("%s; downloading it again", exc)
    return _download(entry, dest, progress=progress, timeout=timeout)


def _download(entry: WeightsEntry, dest: Path, progress: bool, timeout: float) -> Path:
    assert entry.url is not None
    hand = f"download it by hand from {entry.url} and put it at {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the checkpoint folder {dest.parent}: {_reason(exc)}") from exc
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f"{_PARTIAL_PREFIX}{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    done = False
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(entry.url, headers={"User-Agent": _USER_AGENT})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise WeightsError(
                    f"could not download {entry.filename} from {entry.url} ({_reason(exc)}); {hand}"
                ) from exc
            with response:
                length_header = response.headers.get("Content-Length")
                expected_len = int(length_header) if length_header and length_header.isdigit() else None
                _check_space(dest, expected_len or entry.size_bytes, hand)
                log.info("downloading %s from %s", entry.filename, entry.url)
                bar = _progress_bar(expected_len or entry.size_bytes, entry.filename, progress)
                try:
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
                except (http.client.HTTPException, OSError) as exc:
                    raise WeightsError(
                        f"could not download {entry.filename} from {entry.url} (transfer broke off "
                        f"after {human_size(received)}: {_reason(exc)}); {hand}"
                    ) from exc
                finally:
                    bar.close()
            if expected_len is not None and received != expected_len:
                raise WeightsError(
                    f"could not download {entry.filename} from {entry.url} (transfer broke off "
                    f"after {received} of {expected_len} bytes); {hand}"
                )
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if entry.sha256 is not None and actual != entry.sha256:
            raise WeightsError(
                f"downloaded {entry.filename} does not match its checksum (expected sha256 "
                f"{entry.sha256}, got {actual}, {received} bytes) and was deleted; try again, "
                f"or {hand}"
            )
        if entry.sha256 is None:
            log.info("%s has sha256 %s (no checksum registered to compare with)", entry.filename, actual)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        done = True
    finally:
        if not done:
            try:
                tmp.unlink()
            except OSError:
                pass
    _write_marker(dest, actual)
    return dest


def _check_space(dest: Path, size: int | None, hand: str) -> None:
    if not size:
        return
    try:
        free = shutil.disk_usage(dest.parent).free
    except OSError:
        return
    if free < size:
        raise WeightsError(
            f"not enough disk space for {dest.name} ({human_size(size)} needed, {human_size(free)} free in "
            f"{dest.parent}); set SEGPROMPT_HOME to a larger disk, or {hand}"
        )


def _fetch_hub(entry: WeightsEntry, dest: Path, force: bool) -> Path:
    assert entry.repo_id is not None
    clone = f"git clone https://huggingface.co/{entry.repo_id} {dest}"
    if _folder_complete(entry, dest) and not force and not _lfs_pointers(dest):
        return dest
    try:
        import huggingface_hub
    except ImportError as exc:
        raise WeightsError(
            f"fetching {entry.repo_id} needs huggingface_hub (pip install huggingface_hub); "
            f"or put a clone at {dest} by hand: {clone} (with git-lfs installed)"
        ) from exc
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the checkpoint folder {dest.parent}: {_reason(exc)}") from exc
    # download into a fixed hidden sibling (so an interrupted download resumes), then rename
    partial = dest.with_name(f"{_PARTIAL_PREFIX}{dest.name}.part")
    log.info("downloading %s from the Hugging Face Hub into %s", entry.repo_id, dest)
    try:
        huggingface_hub.snapshot_download(repo_id=entry.repo_id, local_dir=str(partial))
    except Exception as exc:  # noqa: BLE001 - offline, 404, auth: all become one clear line
        if partial.is_dir() and not any(True for _ in _visible_files(partial)):
            shutil.rmtree(partial, ignore_errors=True)  # nothing worth resuming
        raise WeightsError(
            f"could not download {entry.repo_id} from the Hugging Face Hub ({_reason(exc)}); "
            f"put a clone at {dest} by hand: {clone} (with git-lfs installed)"
        ) from exc
    if not _folder_complete(entry, partial):
        missing = [n for n in entry.check_files if not (partial / n).is_file()]
        raise WeightsError(
            f"the download of {entry.repo_id} lacks {', '.join(missing) or 'files'}; "
            f"put a clone at {dest} by hand: {clone}"
        )
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    if dest.exists():
        old = dest.with_name(f"{_PARTIAL_PREFIX}{dest.name}.old.{os.getpid()}")
        os.replace(dest, old)
        os.replace(partial, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, dest)
    return dest


__all__ = [
    "DEFAULT_TIMEOUT",
    "WEIGHTS",
    "WeightsEntry",
    "checkpoints_dir",
    "entry_for",
    "fetch",
    "find_weights",
    "get_entry",
    "home",
    "human_size",
    "is_present",
    "list_weights",
    "register_weights",
    "sha256_file",
    "unregister_weights",
    "verify",
    "weights_fingerprint",
    "weights_path",
]
