"""``segprompt napari [IMAGE ...]``: napari with the segprompt plugin docked.

napari and Qt are imported only when the command runs (``pip install "segprompt[napari]"``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

import click

from segprompt.errors import ConfigError


@click.command("napari")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", default="sam-tiny", show_default=True, help="Model to load: sam-tiny, universal-tiny (text and reference prompts), classical, random-walker, or a checkpoint file name in the weights cache.")
@click.option("--checkpoint", default=None, help="A SAM checkpoint file or registry name (sam_vit_b, ...), or a universal .safetensors, to load instead (architecture read from the file).")
@click.option("--sample", is_flag=True, help="Also open the synthetic sample image.")
@click.option("--device", default=None, help="cpu or cuda (default: the first available).")
def napari(images: tuple[Path, ...], model: str, checkpoint: str | None, sample: bool, device: str | None) -> None:
    """Open IMAGES (2-D of any dtype, or 3-D stacks) in napari with the prompting widget docked."""
    problem = display_problem(os.environ, sys.platform)
    if problem:
        raise ConfigError(problem)
    if device is not None:
        from segprompt.devices import check_device

        check_device(device)
    try:
        import napari as _napari  # noqa: F401
        import qtpy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f'the napari plugin needs napari and Qt: pip install "segprompt[napari]" ({exc})') from None
    from viewers.launch import launch

    launch(list(images), model=model, checkpoint=checkpoint, sample=sample, device=device)


#: Qt platform plugins that need no display server
HEADLESS_QT_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb")


def display_problem(env: Mapping[str, str], platform: str, x11_socket_dir: str = "/tmp/.X11-unix") -> str | None:
    """Why a napari window cannot open here (one line), or None if a display is there.

    On Linux and the BSDs Qt needs an X server (``DISPLAY``) or a Wayland compositor
    (``WAYLAND_DISPLAY``), unless ``QT_QPA_PLATFORM`` names a headless plugin. Without one, Qt
    aborts the process (exit 134) after a page of warnings; this check says it in one line first.
    macOS and Windows always have a display.
    """
    if not platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    qpa = env.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()
    if qpa in HEADLESS_QT_PLATFORMS or env.get("WAYLAND_DISPLAY"):
        return None
    display = env.get("DISPLAY", "")
    if display:
        # a local display ":N" is served through the socket /tmp/.X11-unix/XN
        number = display.split(":")[-1].split(".")[0] if display.startswith(":") else ""
        if number.isdigit() and not Path(x11_socket_dir, f"X{number}").exists():
            return (
                f"segprompt napari: DISPLAY={display} names no running X server (no {Path(x11_socket_dir, 'X' + number)}); "
                "start one, or run under a virtual X server: `xvfb-run -a segprompt napari ...`"
            )
        return None
    return (
        "segprompt napari needs a display, and none was found (DISPLAY and WAYLAND_DISPLAY are not set): "
        "run it in a desktop session, over `ssh -X`, or under a virtual X server: `xvfb-run -a segprompt napari ...`"
    )
