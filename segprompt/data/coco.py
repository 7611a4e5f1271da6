"""COCO-format segmentation annotations (pycocotools): per-instance binary masks or semantic label maps.

``mode="instance"``: one binary :class:`Sample` per annotation (crowd annotations skipped),
``id = f"{image_id}_{ann_id}"``, ``texts = (category name,)``.

``mode="semantic"``: one label map per image. Class index = position in the category order
(1-based; 0 = background): the categories in the order given by ``categories``, or all
categories sorted by id. Crowd regions (``iscrowd=1``) become the ignore index 255 unless a
non-crowd instance covers them (crowd is painted first, instances on top, in annotation order).

Segmentations may be polygons (lists of ``[x1, y1, x2, y2, ...]``), uncompressed RLE
(``{"size": [h, w], "counts": [int, ...]}``) or compressed RLE (``counts`` a string).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from segprompt.data.io import read_json, read_image
from segprompt.data.sample import IGNORE_INDEX, Sample, SegmentationDataset
from segprompt.errors import ConfigError, DataError

__all__ = ["CocoDataset"]


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO annotation file is a JSON object, got a {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(f"{path}: not a COCO annotation file (no {', '.join(missing)} list)")
    return data


class CocoDataset(SegmentationDataset):
    """Samples from a COCO annotation JSON.

    Args:
        root_images: folder the images' ``file_name`` are relative to.
        annotation_json: the COCO JSON file.
        mode: ``"instance"`` (binary, one sample per annotation) or ``"semantic"`` (label maps).
        categories: names or ids to keep, in this order (semantic class i+1 = categories[i]);
            None keeps all, sorted by id.
        min_area: instance annotations with a smaller ``area`` are skipped (and not painted in
            semantic mode).
    """

    def __init__(
        self,
        root_images: str | Path,
        annotation_json: str | Path,
        mode: Literal["instance", "semantic"] = "instance",
        categories: Sequence[str | int] | None = None,
        min_area: float = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("instance", "semantic"):
            raise ConfigError(f"mode must be 'instance' or 'semantic', got {mode!r}")
        from pycocotools.coco import COCO

        self.annotation_json = Path(annotation_json)
        self.root = Path(root_images)
        self.mode, self.min_area = mode, float(min_area)
        self.name = name or self.annotation_json.stem
        data = _load_json(self.annotation_json)
        coco = COCO()
        coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise DataError(f"{self.annotation_json}: malformed COCO annotations (missing field {exc})") from exc
        self.coco = coco

        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        if categories is None:
            chosen = cats
        else:
            by_name = {c["name"]: c for c in cats}
            chosen = []
            for c in categories:
                cat = coco.cats.get(c) if isinstance(c, int) else by_name.get(str(c))
                if cat is None:
                    known = ", ".join(f"{k['id']}:{k['name']}" for k in cats)
                    raise ConfigError(f"{self.annotation_json}: no category {c!r} (known: {known})")
                chosen.append(cat)
        self.categories = chosen
        self.category_index = {c["id"]: i + 1 for i, c in enumerate(chosen)}

        if mode == "instance":
            self.task = "binary"
            self.class_names = ()
            for ann in sorted(coco.anns.values(), key=lambda a: (a["image_id"], a["id"])):
                if ann.get("iscrowd", 0) or ann["category_id"] not in self.category_index:
                    continue
                if self._area(ann) < self.min_area:
                    continue
                if ann["image_id"] not in coco.imgs:
                    raise DataError(f"{self.annotation_json}: annotation {ann['id']} refers to unknown image {ann['image_id']}")
                self.records.append({"id": f"{ann['image_id']}_{ann['id']}", "image_id": ann["image_id"], "ann_id": ann["id"]})
        else:
            self.task = "multiclass"
            self.class_names = ("background", *(c["name"] for c in chosen))
            self.ignore_index = IGNORE_INDEX
            for img_id in sorted(coco.imgs):
                self.records.append({"id": str(img_id), "image_id": img_id})

    @staticmethod
    def _area(ann: dict[str, Any]) -> float:
        return float(ann.get("area", np.inf))

    def _image(self, image_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        info = self.coco.imgs[image_id]
        path = self.root / info["file_name"]
        image = read_image(path)
        h, w = info.get("height"), info.get("width")
        if h is not None and w is not None and (int(h), int(w)) != image.shape[:2]:
            raise DataError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} but {self.annotation_json.name} says {h}x{w}"
            )
        return image, info

    def _ann_mask(self, ann: dict[str, Any], info: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
        seg = ann.get("segmentation")
        if not seg:
            raise DataError(f"{self.annotation_json}: annotation {ann['id']} has no segmentation")
        img_info = dict(info)
        img_info.setdefault("height", shape[0])
        img_info.setdefault("width", shape[1])
        self.coco.imgs[ann["image_id"]] = img_info
        try:
            with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword
                warnings.simplefilter("ignore", DeprecationWarning)
                m = self.coco.annToMask(ann)
        except Exception as exc:  # noqa: BLE001 - pycocotools raises assorted errors on bad input
            raise DataError(f"{self.annotation_json}: annotation {ann['id']} has an undecodable segmentation ({exc})") from exc
        if m.shape != shape:
            raise DataError(
                f"{self.annotation_json}: annotation {ann['id']} decodes to {m.shape[0]}x{m.shape[1]}, image is {shape[0]}x{shape[1]}"
            )
        return m.astype(bool)

    def load(self, record: dict[str, Any]) -> Sample:
        image, info = self._image(record["image_id"])
        shape = image.shape[:2]
        meta: dict[str, Any] = {"image_id": record["image_id"], "file_name": info["file_name"], "image_path": str(self.root / info["file_name"])}
        if self.mode == "instance":
            ann = self.coco.anns[record["ann_id"]]
            cat = self.coco.cats[ann["category_id"]]
            mask = self._ann_mask(ann, info, shape)
            meta.update(ann_id=ann["id"], category_id=cat["id"], bbox=ann.get("bbox"), area=ann.get("area"))
            return Sample(id=record["id"], image=image, mask=mask, texts=(cat["name"],), meta=meta)
        labels = np.zeros(shape, np.int64)
        anns = sorted(self.coco.imgToAnns.get(record["image_id"], []), key=lambda a: a["id"])
        for ann in anns:
            if ann.get("iscrowd", 0) and ann["category_id"] in self.category_index:
                labels[self._ann_mask(ann, info, shape)] = IGNORE_INDEX
        present: list[str] = []
        for ann in anns:
            if ann.get("iscrowd", 0) or ann["category_id"] not in self.category_index or self._area(ann) < self.min_area:
                continue
            idx = self.category_index[ann["category_id"]]
            labels[self._ann_mask(ann, info, shape)] = idx
            if self.class_names[idx] not in present:
                present.append(self.class_names[idx])
        return Sample(
            id=record["id"], image=image, mask=labels, texts=tuple(present), class_names=self.class_names,
            ignore_index=IGNORE_INDEX, meta=meta,
        )
