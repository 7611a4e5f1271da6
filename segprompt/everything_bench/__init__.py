"""``segprompt bench everything``: segment-everything masks scored against instance ground truth.

.. code-block:: python

    from segprompt.everything_bench import EverythingBenchConfig, run_everything_bench
    cfg = EverythingBenchConfig(datasets=["kvasir", "camvid"], classes={"camvid": ["car", "pedestrian"]},
                                models=["sam-tiny"], settings={"points_per_side": 8}, limit=2)
    summary = run_everything_bench(cfg, "runs/everything/demo")   # rerun = resume
"""

from segprompt.everything_bench.bench import EverythingBenchConfig, load_bench_dataset, run_everything_bench, summarise, truth_for

__all__ = ["EverythingBenchConfig", "run_everything_bench", "summarise", "truth_for", "load_bench_dataset"]
