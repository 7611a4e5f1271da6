"""``segprompt napari [IMAGE ...]``: napari with the segprompt plugin docked.

napari and Qt are imported only when the command runs (``pip install "segprompt[napari]"``).
"""

from __future__ import annotations

from pathlib import Path

import click

from segprompt.errors import ConfigError


@click.command("napari")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", default="sam-tiny", show_default=True, help="Model to load: sam-tiny, classical, random-walker, or a checkpoint file name in the weights cache.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="A SAM checkpoint file to load instead (official or finetuned; architecture read from the file).")
@click.option("--sample", is_flag=True, help="Also open the synthetic sample image.")
@click.option("--device", default=None, help="cpu or cuda (default: the first available).")
def napari(images: tuple[Path, ...], model: str, checkpoint: Path | None, sample: bool, device: str | None) -> None:
    """Open IMAGES (2-D of any dtype, or 3-D stacks) in napari with the prompting widget docked."""
    try:
        import napari as _napari  # noqa: F401
        import qtpy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f'the napari plugin needs napari and Qt: pip install "segprompt[napari]" ({exc})') from None
    from viewers.launch import launch

    launch(list(images), model=model, checkpoint=checkpoint, sample=sample, device=device)
