"""viewers: the napari plugin of segprompt (npe2 manifest ``viewers/napari.yaml``).

* :mod:`viewers.widget`: the dock widget (``SegpromptWidget``): model picker, background
  embedding with progress and cancel, prompt layers, live preview, commit, undo, key bindings,
  multimask candidates, recording of prompt trajectories;
* :mod:`viewers.session`: the same logic without Qt (slices, embeddings LRU, prompts from
  layers, decoding, recording), usable from scripts and tests;
* :mod:`viewers.coords`: the one place where napari ``(row, col)`` meets segprompt ``(x, y)``;
* :mod:`viewers.models`: what the model picker lists and how each entry loads;
* :mod:`viewers.sample_data`, :mod:`viewers.launch`: sample data and ``segprompt napari``.

Importing this package imports neither napari nor Qt; :mod:`viewers.widget` and
:mod:`viewers.launch` do. The segprompt core never imports ``viewers``.
"""
