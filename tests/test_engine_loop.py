"""The one training loop (segprompt.engine.loop.fit) on a toy model: bit-exact resume after a kill
at every point of an epoch, early stopping and plateau following their monitor, gradient
accumulation equal to a larger batch, checkpoints and rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from segprompt.engine.loop import FitConfig, FitTask, Monitor, epoch_order, fit, load_best
from segprompt.engine.runfolder import RunFolder
from segprompt.engine.training import DistInfo, atomic_torch_save, seed_everything
from segprompt.errors import ConfigError

N_ITEMS = 22


def _data(n: int = N_ITEMS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    y = x @ w + 0.1 * torch.randn(n, generator=g)
    return [(x[i], y[i]) for i in range(n)]


class Toy(nn.Module):
    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 8)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.lin(x)))).squeeze(-1)


def _task(model: Toy, data, fail_at: int | None = None, noise: bool = True) -> FitTask:
    calls = {"n": 0}

    def step(batch, epoch):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("killed")
        x = torch.stack([b[0] for b in batch])
        y = torch.stack([b[1] for b in batch])
        if noise:  # draws from the global RNG, like random prompts do
            x = x + 0.01 * torch.randn_like(x)
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    def evaluate(epoch):
        model.eval()
        with torch.no_grad():
            x = torch.stack([d[0] for d in data])
            y = torch.stack([d[1] for d in data])
            loss = float(((model(x) - y) ** 2).mean())
        return {"val_loss": loss, "val_score": -loss}

    return FitTask(model, step, evaluate)


def _cfg(**kw) -> FitConfig:
    base = dict(epochs=3, batch_size=4, lr=1e-2, accumulate=2, monitor="val_loss", monitor_mode="min", schedule="cosine", warmup_steps=1, progress=False)
    base.update(kw)
    return FitConfig(**base)


def _run(out, cfg, fail_at=None):
    seed_everything(0)
    model = Toy()
    result = fit(_task(model, _data(), fail_at), _data(), cfg, out)
    return model, result


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "ms_per_step")} for h in history]


def test_resume_after_a_kill_at_every_point_is_bit_exact(tmp_path):
    ref_model, ref = _run(tmp_path / "ref", _cfg())
    total_steps = ref.global_step
    batches = math.ceil(N_ITEMS / 4)
    assert total_steps == 3 * math.ceil(batches / 2) == 9
    ref_state = {k: v.clone() for k, v in ref_model.state_dict().items()}
    # a controlled stop after every optimizer step
    for k in range(1, total_steps + 1):
        out = tmp_path / f"stop{k}"
        _, first = _run(out, _cfg(max_steps=k))
        assert first.interrupted and first.global_step == k
        model, resumed = _run(out, _cfg())
        assert resumed.resumed_from["global_step"] == k
        for name, v in model.state_dict().items():
            assert torch.equal(v, ref_state[name]), (k, name)
        assert _strip(resumed.history) == _strip(ref.history)
    # a crash in the middle of an accumulation group: micro-batch 10 of 18 is the 2nd of the
    # 2nd group of epoch 2 (6 micro-batches, 3 steps an epoch); checkpoints every step
    out = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        _run(out, _cfg(checkpoint_every=1), fail_at=10)
    model, resumed = _run(out, _cfg(checkpoint_every=1))
    assert resumed.resumed_from == {"epoch": 1, "batch": 2, "global_step": 4}
    for name, v in model.state_dict().items():
        assert torch.equal(v, ref_state[name]), name


def test_rows_checkpoints_and_a_finished_rerun(tmp_path):
    out = tmp_path / "run"
    run = RunFolder(out, {"suite": "toy"})
    seed_everything(0)
    model = Toy()
    best_rows = []
    task = _task(model, _data())
    task.on_best = best_rows.append
    result = fit(task, _data(), _cfg(), out, run=run)
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and rows[0]["train_loss"] is None
    assert all(r["train_loss"] > 0 and "train_mse" in r and r["lr"] > 0 for r in rows[1:])
    assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").exists()
    assert result.best == min(r["val_loss"] for r in rows) and [r["epoch"] for r in best_rows] == [r["epoch"] for r in rows if r["best"]]
    mtime = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = fit(_task(Toy(), _data()), _data(), _cfg(), out, run=RunFolder(out, {"suite": "toy"}))
    assert again.already_finished and again.global_step == result.global_step
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    # the best checkpoint loads back
    fresh = Toy()
    assert load_best(_task(fresh, _data()), out)["best_epoch"] == result.best_epoch


def test_early_stopping_follows_its_monitor(tmp_path):
    def scripted(values, **kw):
        seq = iter(values)
        model = Toy()
        task = FitTask(model, lambda batch, e: (model(torch.stack([b[0] for b in batch])).pow(2).mean(), {}), lambda e: {"val_loss": next(seq), "val_dice": 0.5})
        return fit(task, _data(), _cfg(epochs=10, accumulate=1, **kw), tmp_path / str(len(list(tmp_path.iterdir()))))

    # epoch 0 = 1.0 (baseline), then improving to 0.8 at epoch 2, then worse: patience 2 stops after epoch 4
    r = scripted([1.0, 0.9, 0.8, 0.85, 0.86, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], patience=2)
    assert r.stopped_early and [h["epoch"] for h in r.history][-1] == 4 and r.best_epoch == 2
    # min_epochs: no stop before epoch 6
    r = scripted([1.0, 0.9, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.9, 0.9], patience=2, min_epochs=6)
    assert [h["epoch"] for h in r.history][-1] == 6
    # min_delta: improvements under 0.05 do not count
    r = scripted([1.0, 0.97, 0.96, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1], patience=2, min_delta=0.05)
    assert r.stopped_early and [h["epoch"] for h in r.history][-1] == 2
    # the same numbers as a 'max' monitor: the run never improves after the baseline
    r = scripted([1.0, 0.9, 0.8, 0.85, 0.86, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], patience=2, monitor_mode="max")
    assert [h["epoch"] for h in r.history][-1] == 2 and r.best_epoch == 0
    # best_by a second metric (TVS: stop on validation loss, keep the best validation Dice)
    r = scripted([1.0, 0.9, 0.8, 0.85, 0.86, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], patience=2, best_by="val_dice", best_mode="max")
    assert r.best_epoch == 0  # val_dice is constant: the first value stays the best


def test_plateau_schedule_follows_its_monitor(tmp_path):
    """Patience 1: the LR halves after the second epoch without improvement; a row holds the LR
    its epoch trained with, so the cut shows from the next epoch's row."""
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]
    cases = (("min", values, 4), ("max", [-v for v in values], 4), ("max", values, None))
    for i, (mode, seq_values, first_cut) in enumerate(cases):
        seq = iter(seq_values)
        model = Toy()
        task = FitTask(model, lambda batch, e: (model(torch.stack([b[0] for b in batch])).pow(2).mean(), {}), lambda e: {"val_loss": next(seq)})
        r = fit(task, _data(), _cfg(epochs=6, accumulate=1, schedule="plateau", plateau_patience=1, plateau_factor=0.5, monitor_mode=mode), tmp_path / str(i))
        lrs = [h["lr"] for h in r.history[1:]]
        cut = next((e + 1 for e, lr in enumerate(lrs) if lr < 1e-2), None)
        assert cut == first_cut, (mode, lrs)
        if cut:
            assert lrs[cut - 1] == pytest.approx(5e-3) and lrs[-1] == pytest.approx(2.5e-3)


def test_accumulating_k_batches_of_n_equals_one_batch_of_kn(tmp_path):
    states = []
    for batch_size, accumulate in ((3, 4), (12, 1)):
        seed_everything(1)
        model = Toy(dropout=0.0)
        task = _task(model, _data(24), noise=False)
        fit(task, _data(24), _cfg(epochs=2, batch_size=batch_size, accumulate=accumulate, grad_clip=None, schedule="constant"), tmp_path / f"b{batch_size}")
        states.append(model.state_dict())
    for name in states[0]:
        assert torch.allclose(states[0][name], states[1][name], atol=1e-6, rtol=0), name
    assert not torch.equal(states[0]["lin.weight"], Toy(dropout=0.0).lin.weight)  # it trained


def test_epoch_order_is_a_lockstep_shard():
    full = epoch_order(10, 0, 3)
    assert sorted(full) == list(range(10))
    ranks = [epoch_order(10, 0, 3, DistInfo(r, 3, r)) for r in range(3)]
    assert all(len(r) == 3 for r in ranks) and sorted(sum(ranks, [])) == sorted(full[:9])
    assert epoch_order(10, 0, 3) != epoch_order(10, 0, 4)


def test_monitor_modes():
    m = Monitor("min", min_delta=0.1)
    assert m.update(1.0, 0) and not m.update(0.95, 1) and m.update(0.8, 2) and m.bad_epochs == 0
    assert not m.update(float("nan"), 3) and m.bad_epochs == 1


def test_an_old_checkpoint_layout_is_a_clear_error(tmp_path):
    out = tmp_path / "old"
    atomic_torch_save({"model": {}, "epoch": 1}, out / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="older layout.*cannot resume it"):
        _run(out, _cfg())
