"""segprompt.backbones.pyramid: multi-scale vision adapters (SAM, sam-tiny, open_clip, timm).

Tiny random models only (no downloads). Base maps are compared with the libraries' own
forwards (``Sam.image_encoder(Sam.preprocess(x))``, timm's ``forward_features``, open_clip's
``forward_intermediates``) and the pyramid with a functional re-implementation of ViTDet's
``SimpleFeaturePyramid`` rule (detectron2 ``modeling/backbone/vit.py``) written here.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segprompt.backbones import VisionPyramid, create_pyramid, list_pyramids
from segprompt.backbones.pyramid import LayerNorm2d, SimpleFeaturePyramid
from segprompt.errors import ConfigError
from segprompt.models.sam_arch import tiny_arch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# -- tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory):
    """(path, arch): a random tiny SAM saved by save_sam (segment-anything's key layout, .pth plus
    the architecture sidecar with its head counts)."""
    from segprompt.models.sam_arch import save_sam

    arch = tiny_arch(img_size=128, window_size=4)  # an 8x8 grid: windowed and global blocks
    torch.manual_seed(0)
    sam = arch.build()
    path = save_sam(sam, tmp_path_factory.mktemp("sam") / "tiny_sam.pth", arch)
    return path, arch


def library_sam(path, arch):
    """segment-anything's Sam with the file's weights, loaded without segprompt's loader."""
    sam = arch.build()
    sam.load_state_dict(torch.load(path, weights_only=True))
    return sam.eval()


def tiny_clip(seed: int = 0, image_size: int = 32, patch: int = 8, layers: int = 2):
    """A tiny open_clip CLIP (as tunevlseg.models.tiny_openclip_model, with a small vocabulary)."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=layers, width=32, head_width=8, patch_size=patch, image_size=image_size),
        text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1),
    ).eval()


def tiny_timm(seed: int = 0, name: str = "vit_tiny_patch16_224", img_size: int = 64, **kw):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, img_size=img_size, depth=2, num_classes=0, **kw).eval()


def images(side: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, side, side, generator=g) * 255


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def build(kind: str, sam_ckpt, trainable: str = "frozen", seed: int = 0, **kw) -> VisionPyramid:
    """One small pyramid of each kind; the same seed gives the same trunk and pyramid weights."""
    torch.manual_seed(seed + 100)
    if kind == "sam":
        return create_pyramid("sam", checkpoint=sam_ckpt[0], out_channels=16, trainable=trainable, **kw)
    if kind == "timm":
        return create_pyramid("timm", model=tiny_timm(seed), out_channels=16, trainable=trainable, **kw)
    if kind == "dinov2":
        model = tiny_timm(seed, "vit_small_patch14_dinov2", img_size=56)
        return create_pyramid("timm", model=model, out_channels=16, trainable=trainable, **kw)
    if kind == "open_clip":
        return create_pyramid("open_clip", model=tiny_clip(seed), out_channels=16, trainable=trainable, **kw)
    raise KeyError(kind)


KINDS = ("sam", "timm", "dinov2", "open_clip")
# kind -> (img_size, strides, base channels)
GEOMETRY = {
    "sam": (128, (4.0, 8.0, 16.0, 32.0), 32),
    "timm": (64, (4.0, 8.0, 16.0, 32.0), 192),
    "dinov2": (56, (3.5, 7.0, 14.0, 28.0), 384),
    "open_clip": (32, (2.0, 4.0, 8.0, 16.0), 32),
}


# -- the pyramid rule ----------------------------------------------------------------------------


def ln2d(x, norm):
    """Channel LayerNorm of (B, C, H, W) through F.layer_norm on channels-last."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)


def vitdet_stage(x: torch.Tensor, scale: float, stage: nn.Sequential) -> torch.Tensor:
    """detectron2 SimpleFeaturePyramid, norm="LN": the resampling, then conv1x1 + LN, conv3x3 + LN (no bias)."""
    mods = list(stage)
    if scale == 4.0:
        up1, n1, _, up2 = mods[:4]
        assert up1.out_channels == x.shape[1] // 2 and up2.out_channels == x.shape[1] // 4
        x = F.conv_transpose2d(x, up1.weight, up1.bias, stride=2)
        x = F.gelu(ln2d(x, n1))
        x = F.conv_transpose2d(x, up2.weight, up2.bias, stride=2)
        rest = mods[4:]
    elif scale == 2.0:
        assert mods[0].out_channels == x.shape[1] // 2
        x, rest = F.conv_transpose2d(x, mods[0].weight, mods[0].bias, stride=2), mods[1:]
    elif scale == 1.0:
        rest = mods
    else:
        x, rest = F.max_pool2d(x, 2, 2), mods[1:]
    c1, n1, c3, n3 = rest
    assert c1.bias is None and c3.bias is None and c1.kernel_size == (1, 1) and c3.kernel_size == (3, 3)
    x = ln2d(F.conv2d(x, c1.weight), n1)
    return ln2d(F.conv2d(x, c3.weight, padding=1), n3)


def test_simple_feature_pyramid_follows_vitdet():
    torch.manual_seed(0)
    sfp = SimpleFeaturePyramid(16, 8)
    for stage in sfp.stages:  # non-trivial norm parameters
        for m in stage.modules():
            if isinstance(m, LayerNorm2d):
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)
    x = torch.randn(2, 16, 6, 6)
    out = sfp(x)
    assert sfp.scales == (4.0, 2.0, 1.0, 0.5)
    assert [tuple(o.shape) for o in out] == [(2, 8, 24, 24), (2, 8, 12, 12), (2, 8, 6, 6), (2, 8, 3, 3)]
    for o, s, stage in zip(out, sfp.scales, sfp.stages):
        torch.testing.assert_close(o, vitdet_stage(x, s, stage), rtol=1e-5, atol=1e-5)


def test_layernorm2d_equals_segment_anything():
    from segment_anything.modeling.common import LayerNorm2d as SamLN

    ours, ref = LayerNorm2d(5), SamLN(5)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 4, 3) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x))


def test_scales_choose_and_order_levels(sam_ckpt):
    pyr = build("sam", sam_ckpt, scales=(0.5, 2.0, 1.0))
    assert pyr.scales == (2.0, 1.0, 0.5) and pyr.strides == (8.0, 16.0, 32.0)
    assert [f.shape[-1] for f in pyr(images(128, 1))] == [16, 8, 4]
    with pytest.raises(ConfigError, match="scale 3.0"):
        build("sam", sam_ckpt, scales=(3.0,))


# -- geometry of every kind ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_strides_channels(kind, sam_ckpt):
    pyr = build(kind, sam_ckpt)
    side, strides, base = GEOMETRY[kind]
    assert isinstance(pyr, VisionPyramid)
    assert (pyr.img_size, pyr.strides, pyr.channels, pyr.base_channels) == (side, strides, 16, base)
    assert pyr.pixel_mean.shape == (3,) and pyr.pixel_std.shape == (3,)
    feats = pyr(images(side))
    assert [tuple(f.shape) for f in feats] == [(2, 16, round(side / s), round(side / s)) for s in strides]
    with pytest.raises(ConfigError, match=f"\\(B, 3, {side}, {side}\\)"):
        pyr(images(side + 16))


# -- the base maps are the libraries' own ---------------------------------------------------------


def test_sam_base_map_is_the_library_encoder_output(sam_ckpt):
    path, arch = sam_ckpt
    sam = library_sam(path, arch)
    pyr = create_pyramid("sam", checkpoint=path, attention="reference")  # segment-anything's forward: bit for bit
    fast = create_pyramid("sam", checkpoint=path)  # the default sdpa path: within fp32 rounding
    x = images(128)
    with torch.no_grad():
        want = sam.image_encoder(sam.preprocess(x))
        assert torch.equal(pyr.base_map(x), want)
        got = fast.base_map(x)
        assert not torch.equal(got, want) and float((got - want).abs().max() / want.abs().max()) < 1e-5
        # SAM's padding convention: normalise the unpadded image, then pad with zeros
        small = images(128, 1, seed=3)[:, :, :100, :70]
        padded = F.pad(small, (0, 58, 0, 28))
        want = sam.image_encoder(sam.preprocess(small))
        assert torch.equal(pyr.base_map(padded, sizes=[(100, 70)]), want)
    assert torch.equal(pyr.pixel_mean, sam.pixel_mean.reshape(3))
    assert torch.equal(pyr.pixel_std, sam.pixel_std.reshape(3))


def test_sam_from_model_and_from_arch(sam_ckpt):
    path, arch = sam_ckpt
    sam = library_sam(path, arch)
    x = images(128, 1)
    pyr = create_pyramid("sam", model=sam)
    assert pyr.trunk is sam.image_encoder
    with torch.no_grad():
        assert torch.equal(pyr.base_map(x), sam.image_encoder(sam.preprocess(x)))
    random = create_pyramid("sam", arch=tiny_arch(img_size=64, window_size=2))
    assert random.img_size == 64 and random.strides == (4.0, 8.0, 16.0, 32.0)
    from_json = create_pyramid("sam", arch=json.loads(tiny_arch(img_size=64, window_size=2).to_json()), scales=[1, 0.5])
    assert from_json.arch == random.arch and from_json.strides == (16.0, 32.0)
    for bad in ({}, {"checkpoint": path, "arch": arch}):
        with pytest.raises(ConfigError, match="exactly one of"):
            create_pyramid("sam", **bad)


def test_sam_checkpoint_in_official_layout_loads_its_size(tmp_path):
    arch = tiny_arch(img_size=192, encoder_embed_dim=96, encoder_depth=3, encoder_num_heads=3,
                     encoder_global_attn_indexes=(2,), prompt_embed_dim=48)
    torch.manual_seed(1)
    sam = arch.build()
    path = tmp_path / "custom_sam.pth"
    torch.save(sam.state_dict(), path)  # plain state dict, no sidecar
    pyr = create_pyramid("sam", checkpoint=path, out_channels=8)
    enc = pyr.trunk
    assert (pyr.img_size, pyr.base_channels, len(enc.blocks), enc.blocks[0].attn.num_heads) == (192, 48, 3, 3)
    assert pyr.arch.encoder_embed_dim == 96 and pyr.arch.encoder_global_attn_indexes == (2,)
    assert [f.shape[-1] for f in pyr(images(192, 1))] == [48, 24, 12, 6]
    lib = sam.image_encoder.state_dict()
    assert all(torch.equal(v, lib[k]) for k, v in enc.state_dict().items())
    assert not any(isinstance(m, type(sam.mask_decoder)) for m in pyr.modules())  # only the encoder kept


def test_sam_tiny_loads_the_bundled_weights():
    from segprompt.models.sam_arch import load_sam
    from segprompt.models.sam_tiny import sam_tiny_path

    pyr = create_pyramid("sam-tiny", out_channels=8)
    sam, arch = load_sam(sam_tiny_path())
    assert pyr.img_size == 256 == arch.img_size and pyr.strides == (4.0, 8.0, 16.0, 32.0)
    assert pyr.base_channels == arch.prompt_embed_dim
    x = images(256, 1)
    with torch.no_grad():
        want = sam.image_encoder(sam.preprocess(x))
        assert torch.equal(create_pyramid("sam-tiny", out_channels=8, attention="reference").base_map(x), want)
        assert float((pyr.base_map(x) - want).abs().max() / want.abs().max()) < 1e-5  # the default sdpa path
    with pytest.raises(ConfigError, match="bundled"):
        create_pyramid("sam-tiny", checkpoint=sam_tiny_path())


@pytest.mark.parametrize("name,side,prefix", [("vit_tiny_patch16_224", 64, 1), ("vit_small_patch14_dinov2", 56, 1),
                                              ("vit_small_patch14_reg4_dinov2", 56, 5)])
def test_timm_base_map_is_forward_features_patch_tokens(name, side, prefix):
    model = tiny_timm(0, name, img_size=side)
    pyr = create_pyramid("timm", model=copy.deepcopy(model), out_channels=8)
    cfg = model.pretrained_cfg
    mean, std = [255 * v for v in cfg["mean"]], [255 * v for v in cfg["std"]]
    torch.testing.assert_close(pyr.pixel_mean, torch.tensor(mean))
    x = images(side)
    grid = side // model.patch_embed.patch_size[0]
    with torch.no_grad():
        tokens = model.forward_features(normalise(x, mean, std))
        want = tokens[:, prefix:].transpose(1, 2).reshape(2, -1, grid, grid)
        assert torch.equal(pyr.base_map(x), want)


def test_timm_by_name_and_checkpoint(tmp_path):
    pyr = create_pyramid("timm", model_name="vit_small_patch14_dinov2", img_size=56, model_kwargs=dict(depth=1), out_channels=8)
    assert pyr.img_size == 56 and pyr.strides == (3.5, 7.0, 14.0, 28.0)
    torch.testing.assert_close(pyr.pixel_mean, 255 * torch.tensor((0.485, 0.456, 0.406)))
    model = tiny_timm(3)
    path = tmp_path / "vit.pth"
    torch.save(model.state_dict(), path)
    loaded = create_pyramid("timm", model_name="vit_tiny_patch16_224", checkpoint=path, img_size=64, model_kwargs=dict(depth=2))
    sd = loaded.trunk.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_open_clip_base_map_is_the_library_last_block(sam_ckpt):
    model = tiny_clip()
    pyr = create_pyramid("open_clip", model=copy.deepcopy(model), out_channels=8)
    torch.testing.assert_close(pyr.pixel_mean, 255 * torch.tensor(OPENAI_MEAN))
    x = images(32)
    with torch.no_grad():
        out = model.visual.forward_intermediates(
            normalise(x, [255 * v for v in OPENAI_MEAN], [255 * v for v in OPENAI_STD]),
            indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NCHW",
        )
        torch.testing.assert_close(pyr.base_map(x), out["image_intermediates"][-1], rtol=1e-5, atol=1e-5)


def test_open_clip_timm_tower_and_model_name(monkeypatch):
    import open_clip
    from open_clip.timm_model import TimmModel

    from segprompt.backbones.pyramid_towers import TimmPyramid

    holder = nn.Module()
    torch.manual_seed(0)
    holder.visual = TimmModel("vit_tiny_patch16_224", 16, image_size=32, pool="", proj="linear")
    holder.visual.trunk = tiny_timm(img_size=32, patch_size=8)  # TimmModel builds its trunk at 224: a tiny one
    pyr = create_pyramid("open_clip", model=holder, out_channels=8)
    assert isinstance(pyr, TimmPyramid) and pyr.trunk is holder.visual.trunk and pyr.img_size == 32
    torch.testing.assert_close(pyr.pixel_mean, 255 * torch.tensor(OPENAI_MEAN))  # open_clip's, not timm's
    seen = {}

    def fake_create_model(name, pretrained=None, **kw):
        seen.update(name=name, pretrained=pretrained, **kw)
        model = tiny_clip(image_size=kw.get("force_image_size", 32))
        open_clip.model.set_model_preprocess_cfg(model, {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
        return model

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    pyr = create_pyramid("open_clip", model_name="ViT-B-16", pretrained="laion2b", img_size=48)
    assert seen == {"name": "ViT-B-16", "pretrained": "laion2b", "force_image_size": 48}
    assert pyr.img_size == 48 and pyr.strides == (2.0, 4.0, 8.0, 16.0)
    torch.testing.assert_close(pyr.pixel_mean, torch.full((3,), 127.5))


# -- training modes ------------------------------------------------------------------------------


def _backward(pyr: VisionPyramid, side: int) -> None:
    sum(f.square().mean() for f in pyr(images(side))).backward()


def _trunk_and_pyramid(pyr: VisionPyramid):
    return list(pyr.trunk.named_parameters()), list(pyr.pyramid.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_trains_only_the_pyramid(kind, sam_ckpt):
    pyr = build(kind, sam_ckpt)
    pyr.train()
    assert pyr.training and not pyr.trunk.training  # the frozen trunk stays in eval mode
    trunk, pyramid = _trunk_and_pyramid(pyr)
    _backward(pyr, pyr.img_size)
    assert all(p.grad is None and not p.requires_grad for _, p in trunk)
    assert all(p.grad is not None for p in pyramid)
    assert {id(p) for p in pyr.trainable_parameters()} == {id(p) for p in pyramid}
    x = images(pyr.img_size, 1).requires_grad_()  # gradients still reach the input when asked
    pyr.base_map(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("kind", ["timm", "open_clip"])
def test_frozen_trunk_passes_gradients_to_attached_prompt_tokens(kind, sam_ckpt):
    """Visual prompt tokens attached through the tower's hooks train through a frozen trunk."""
    pyr = build(kind, sam_ckpt)
    x = images(pyr.img_size)
    prompts = (0.1 * torch.randn(1, 2, pyr.tower.width)).requires_grad_()
    with pyr.tower.prompted(prompts):
        feats = pyr(x)
    assert all(tuple(f.shape) == tuple(g.shape) for f, g in zip(feats, pyr(x)))
    sum(f.square().mean() for f in feats).backward()
    assert prompts.grad is not None and bool(prompts.grad.abs().sum() > 0)
    assert all(p.grad is None for p in pyr.trunk.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_lora_trains_lora_and_pyramid_and_starts_at_the_frozen_output(kind, sam_ckpt):
    frozen = build(kind, sam_ckpt, "frozen", seed=0)
    lora = build(kind, sam_ckpt, "lora", seed=0)
    assert lora.lora_rank == 4
    x = images(frozen.img_size)
    with torch.no_grad():
        for a, b in zip(frozen(x), lora(x)):
            assert torch.equal(a, b)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pyramid.") for n in trainable)
    lora_names = {n for n in trainable if "lora_" in n}
    assert len(lora_names) == 2 * 2 * 2  # 2 blocks x (qkv, proj) x (A, B)
    assert {id(p) for p in lora.trainable_parameters()} == {id(p) for n, p in lora.named_parameters() if n in trainable}
    lora.train()
    _backward(lora, lora.img_size)
    assert all(p.grad is not None for n, p in lora.named_parameters() if n in lora_names)
    assert all(p.grad is None for n, p in lora.trunk.named_parameters() if "lora_" not in n)
    with torch.no_grad():  # a non-zero B changes the output: the update is in the forward
        for n, p in lora.named_parameters():
            if n.endswith("lora_b"):
                p.normal_()
        lora.eval()
        assert not torch.equal(lora.base_map(x), frozen.base_map(x))


@pytest.mark.parametrize("kind", KINDS)
def test_full_trains_the_trunk(kind, sam_ckpt):
    pyr = build(kind, sam_ckpt, "full")
    pyr.train()
    assert pyr.trunk.training
    trunk, pyramid = _trunk_and_pyramid(pyr)
    _backward(pyr, pyr.img_size)
    assert all(p.requires_grad for _, p in trunk)
    unused = ["proj"] if kind == "open_clip" else []  # open_clip's pooled-feature projection
    assert [n for n, p in trunk if p.grad is None] == unused
    assert len(pyr.trainable_parameters()) == len(trunk) + len(pyramid)


# -- errors and import cost ----------------------------------------------------------------------


def test_unknown_name_and_bad_trainable():
    with pytest.raises(ConfigError, match="unknown vision pyramid 'dino'.*Known: .*open-clip"):
        create_pyramid("dino")
    with pytest.raises(ConfigError, match="trainable must be one of frozen, lora, full"):
        create_pyramid("sam-tiny", trainable="partial")
    assert list_pyramids() == ["open-clip", "sam", "sam-tiny", "timm"]


@pytest.mark.parametrize("kind,module,package", [("timm", "timm", "timm"), ("open_clip", "open_clip", "open_clip_torch"),
                                                  ("sam", "segment_anything", "segment-anything")])
def test_missing_package_is_named(kind, module, package, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails, as when not installed
    with pytest.raises(ConfigError, match=f"needs the '{package}' package.*pip install {package}"):
        create_pyramid(kind, model_name="x") if kind != "sam" else create_pyramid("sam", arch=tiny_arch())


def test_importing_backbones_stays_light():
    code = ("import sys, segprompt.backbones as b; b.create_pyramid; "
            "print([m for m in ('timm', 'open_clip', 'segment_anything') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
