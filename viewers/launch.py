"""Open napari with the segprompt widget docked (what ``segprompt napari`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segprompt.errors import ConfigError, DataError


def read_any(path: str | Path) -> tuple[np.ndarray, bool]:
    """Raw pixel array of an image file (dtype kept: 16-bit and float stay so) and whether it is RGB."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    arr: np.ndarray | None = None
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile

            arr = tifffile.imread(str(path))
        except ImportError:
            arr = None
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types
            raise DataError(f"{path}: unreadable TIFF ({exc})") from exc
    if arr is None:
        from segprompt.data.io import _read_array

        arr = _read_array(path)
    arr = np.asarray(arr)
    rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and arr.ndim in (3, 4)
    return arr, bool(rgb)


def add_image(viewer: Any, path: str | Path) -> Any:
    """Add an image file to ``viewer`` as an image layer named by the file stem."""
    arr, rgb = read_any(path)
    return viewer.add_image(arr, name=Path(path).stem, rgb=rgb)


def _choice_for(widget: Any, model: str) -> Any:
    for c in widget.model_choices:
        if model in (c.name, c.label) or (c.checkpoint is not None and model == c.checkpoint.name):
            return c
    names = ", ".join(c.name or c.label for c in widget.model_choices)
    raise ConfigError(f"unknown model {model!r} for the napari plugin; choose one of: {names}, or pass --checkpoint FILE")


def launch(
    images: Sequence[str | Path] = (),
    *,
    model: str | None = "sam-tiny",
    checkpoint: str | Path | None = None,
    sample: bool = False,
    device: str | None = None,
    show: bool = True,
    run: bool = True,
    viewer: Any = None,
) -> tuple[Any, Any]:
    """Open napari (or use ``viewer``) with the images, dock the widget, start loading the model.

    Returns ``(viewer, widget)``; with ``run=True`` it first blocks in the Qt event loop until
    the window is closed.
    """
    import napari

    from viewers.sample_data import synthetic_lesion
    from viewers.widget import SegpromptWidget

    if checkpoint is not None:
        from segprompt.weights import find_weights

        checkpoint = find_weights(checkpoint)  # a file, or a registry name such as sam_vit_b (clear error if absent)
    arrays = [(Path(p).stem, *read_any(p)) for p in images]  # read first: a bad file fails before a window opens
    if viewer is None:
        # load torch (and with it triton, on CUDA builds) before the window's OpenGL loads Mesa's
        # LLVM: the other order crashes (see viewers.models.avoid_llvm_clash)
        import sys

        from viewers.models import avoid_llvm_clash

        avoid_llvm_clash()  # a window already drew in this process: too late for triton
        try:
            import importlib.util

            import torch  # noqa: F401

            if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
                import triton  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken optional triton must not stop napari
            pass
        viewer = napari.Viewer(show=show)
    for name, arr, rgb in arrays:
        viewer.add_image(arr, name=name, rgb=rgb)
    if sample:
        for data, kwargs, kind in synthetic_lesion():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = SegpromptWidget(viewer)
    viewer.window.add_dock_widget(widget, name="segprompt", area="right")
    if device is not None:
        i = widget.device_combo.findText(device)
        if i < 0:
            raise ConfigError(f"device {device!r} is not available here; choose one of {[widget.device_combo.itemText(k) for k in range(widget.device_combo.count())]}")
        widget.device_combo.setCurrentIndex(i)
    if checkpoint is not None:
        widget.add_checkpoint(checkpoint)
        widget.load_model()
    elif model:
        choice = _choice_for(widget, model)
        widget.select_model(choice.label)
        widget.load_model(choice)
    if run:
        napari.run()
    return viewer, widget


__all__ = ["add_image", "launch", "read_any"]
