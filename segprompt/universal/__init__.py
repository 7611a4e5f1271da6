"""A SEEM-style universal decoder in plain PyTorch: one decoder for points, boxes, scribbles,
masks, text and reference images, alone or together, with memory of earlier rounds.

The parts, each one module with one job:

* :mod:`~segprompt.universal.config`: :class:`UniversalConfig`, the sizes (a dataclass saved
  with every checkpoint);
* :mod:`~segprompt.universal.pixel_decoder`: an FPN over the backbone pyramid
  (:mod:`segprompt.backbones.pyramid`) giving stride-4 mask features and three scales for the
  decoder's cross-attention;
* :mod:`~segprompt.universal.sampler`: the visual sampler, prompt regions -> prompt tokens;
* :mod:`~segprompt.universal.text`: text encoders (the open_clip / HF CLIP text towers of
  :mod:`segprompt.backbones`, or a closed vocabulary for the bundled demo model);
* :mod:`~segprompt.universal.decoder`: object queries, prompt queries, memory, SEEM's attention
  mask, masked cross-attention cycling over the scales, the heads;
* :mod:`~segprompt.universal.prompting`: :class:`~segprompt.prompts.PromptSet` -> the tensors the
  decoder reads;
* :mod:`~segprompt.universal.model`: :class:`UniversalModel`, the sum of the above;
* :mod:`~segprompt.universal.losses`: Hungarian matching and the training losses.

The Segmenter is :class:`segprompt.models.universal.UniversalSegmenter` (``create_segmenter
("universal", checkpoint=...)``, ``"universal-tiny"``).
"""
