"""The embedding cache: hits equal fresh computation; stale or corrupt entries are never used."""

from __future__ import annotations

import json

import pytest
import torch

from segprompt.cache import EmbeddingCache
from segprompt.data.synthetic import SyntheticLesions
from segprompt.models.sam import SamSegmenter
from segprompt.models.sam_arch import save_sam, tiny_arch


class CountingSam(SamSegmenter):
    """Counts real encoder runs."""

    calls = 0

    def _encode(self, image):
        type(self).calls += 1
        return super()._encode(image)


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    return save_sam(tiny_arch().build(), tmp_path / "tiny.safetensors")


@pytest.fixture()
def images():
    return [s.image for s in SyntheticLesions(n=2, seed=5, size=(80, 120))]


def test_hit_equals_fresh_and_skips_encoder(tmp_path, model_file, images):
    CountingSam.calls = 0
    plain = SamSegmenter(checkpoint=model_file)
    cached = CountingSam(checkpoint=model_file, cache=tmp_path / "cache")
    first = cached.encode(images[0])
    second = cached.encode(images[0])
    assert CountingSam.calls == 1 and cached.cache.stats.hits == 1
    fresh = plain.encode(images[0])
    assert torch.equal(first.features["embeddings"], fresh.features["embeddings"])
    assert torch.equal(second.features["embeddings"], fresh.features["embeddings"])
    assert second.original_size == fresh.original_size and second.input_size == fresh.input_size
    cached.encode(images[1])  # another image is another key
    assert CountingSam.calls == 2


def test_key_depends_on_weights_and_preprocessing(tmp_path, model_file, images):
    cache = EmbeddingCache(tmp_path / "c")
    a = SamSegmenter(checkpoint=model_file, cache=cache)
    torch.manual_seed(1)
    other_file = save_sam(tiny_arch().build(), tmp_path / "other.safetensors")
    b = SamSegmenter(checkpoint=other_file, cache=cache)
    ea = a.encode(images[0]).features["embeddings"]
    eb = b.encode(images[0]).features["embeddings"]
    assert cache.stats.misses == 2 and not torch.allclose(ea, eb)
    c = SamSegmenter(checkpoint=model_file, cache=cache, precision="bf16")
    c.encode(images[0])
    assert cache.stats.misses == 3  # precision is part of the signature


def _only_entry(folder):
    files = list(folder.glob("*/*.safetensors"))
    assert len(files) == 1
    return files[0]


def test_corrupt_entry_is_recomputed(tmp_path, model_file, images):
    CountingSam.calls = 0
    seg = CountingSam(checkpoint=model_file, cache=tmp_path / "c")
    good = seg.encode(images[0]).features["embeddings"]
    path = _only_entry(tmp_path / "c")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(data))
    again = seg.encode(images[0]).features["embeddings"]
    assert CountingSam.calls == 2 and seg.cache.stats.rejected == 1
    assert torch.equal(again, good)
    path.write_bytes(b"garbage")  # unparsable
    assert torch.equal(seg.encode(images[0]).features["embeddings"], good)
    assert CountingSam.calls == 3 and seg.cache.stats.rejected == 2


def test_stale_entry_is_recomputed(tmp_path, model_file, images):
    from safetensors import safe_open
    from safetensors.torch import save_file

    CountingSam.calls = 0
    seg = CountingSam(checkpoint=model_file, cache=tmp_path / "c")
    good = seg.encode(images[0]).features["embeddings"]
    path = _only_entry(tmp_path / "c")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    sig = json.loads(meta["signature"])
    sig["model"]["image_encoder"] = "0" * 64  # as if written by other weights under the same file name
    meta["signature"] = json.dumps(sig, sort_keys=True)
    tensors = {k: v + 1 for k, v in tensors.items()}
    from segprompt.cache import tensor_digest

    meta["checksum"] = tensor_digest(tensors)  # a self-consistent but stale file
    save_file(tensors, str(path), metadata=meta)
    again = seg.encode(images[0]).features["embeddings"]
    assert CountingSam.calls == 2 and torch.equal(again, good)


def test_fp16_storage(tmp_path, model_file, images):
    seg32 = SamSegmenter(checkpoint=model_file)
    seg16 = SamSegmenter(checkpoint=model_file, cache=EmbeddingCache(tmp_path / "c16", dtype="fp16"))
    ref = seg32.encode(images[0]).features["embeddings"]
    miss = seg16.encode(images[0]).features["embeddings"]
    hit = seg16.encode(images[0]).features["embeddings"]
    assert torch.equal(miss, hit)  # a miss gives what a later hit gives
    assert hit.dtype == torch.float32
    assert torch.allclose(hit, ref, rtol=2e-3, atol=2e-3) and not torch.equal(hit, ref)
    size16 = _only_entry(tmp_path / "c16").stat().st_size
    seg_full = SamSegmenter(checkpoint=model_file, cache=tmp_path / "c32")
    seg_full.encode(images[0])
    assert size16 < 0.6 * _only_entry(tmp_path / "c32").stat().st_size
    # masks decoded from the fp16 state match fp32 almost everywhere
    from segprompt.prompts import Points, PromptSet

    ps = PromptSet(points=Points([[60, 40]], [1]))
    a = seg32.segment(seg32.encode(images[0]), ps).masks
    b = seg16.segment(seg16.encode(images[0]), ps).masks
    assert (a == b).mean() > 0.99


def test_decoder_only_change_keeps_cache_valid(tmp_path, model_file, images):
    CountingSam.calls = 0
    seg = CountingSam(checkpoint=model_file, cache=tmp_path / "c")
    seg.encode(images[0])
    with torch.no_grad():
        for p in seg.model.mask_decoder.parameters():
            p.add_(1.0)
    seg.forget_weights_hash()
    seg.encode(images[0])
    assert CountingSam.calls == 1  # embeddings do not depend on the decoder
    with torch.no_grad():
        next(seg.model.image_encoder.parameters()).add_(1.0)
    seg.forget_weights_hash()
    seg.encode(images[0])
    assert CountingSam.calls == 2  # a changed encoder is a new key
