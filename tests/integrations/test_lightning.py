"""The Lightning integration through a real ``lightning.Trainer`` into a real server."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from probe.integrations.lightning import OptiscopeCallback, OptiscopeLogger
from tests.integrations.stored import stored_run, stored_series

STEPS = 6


def _data(n: int = 48) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)).squeeze(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


class Regressor(pl.LightningModule):
    def __init__(self, manual: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = not manual
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(1), y)
        self.losses.append(float(loss))
        self.log("loss", loss, on_step=True)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _trainer(callback: OptiscopeCallback, **kw) -> pl.Trainer:  # noqa: ANN003
    return pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1, **kw)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_lightning_callback_logs_metrics_config_and_diagnostics(live_server, monkeypatch, manual: bool) -> None:  # noqa: ANN001
    srv = live_server()
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))
    torch.manual_seed(0)
    module = Regressor(manual=manual)
    callback = OptiscopeCallback(project="pl", name=f"pl-{manual}", attach_options={"log_every": 2})
    trainer = _trainer(callback)
    trainer.fit(module, _data())
    run_id = callback.logger.last_run_id
    series = stored_series(srv.api, srv.headers, run_id)

    steps, values = series["loss"]
    assert len(steps) == len(set(steps)) == STEPS
    assert values == pytest.approx(module.losses, rel=1e-6)  # what the module computed, in order
    names = {n for n, _ in module.named_parameters()}
    assert {k.split("/", 1)[1] for k in series if k.startswith("grad_norm/")} == names
    probe_steps = series["grad_norm/net.0.weight"][0]
    assert probe_steps == steps, "the probe's steps and self.log's steps must line up"
    run = stored_run(srv.api, srv.headers, run_id)
    assert run["status"] == "finished"
    assert run["config"]["lr"] == 0.05 and run["config"]["manual"] is manual
    assert run["optimizer"] == "SGD"


def test_lightning_logger_alone_logs_metrics(live_server, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))
    logger = OptiscopeLogger(project="pl", name="logger-only")
    module = Regressor()
    pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1).fit(module, _data())
    series = stored_series(srv.api, srv.headers, logger.last_run_id)
    assert series["loss"][1] == pytest.approx(module.losses, rel=1e-6)
    assert not any(k.startswith("grad_norm/") for k in series)  # no callback, no probe


def test_lightning_fit_from_a_checkpoint_continues_the_run(live_server, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    srv = live_server()
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))

    def trainer(callback: OptiscopeCallback) -> pl.Trainer:
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1,
                                             filename="{step}")
        return pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False,
                          callbacks=[callback, saver], enable_progress_bar=False, enable_model_summary=False,
                          log_every_n_steps=1)

    torch.manual_seed(0)
    first = OptiscopeCallback(project="pl", name="resume", attach_options={"log_every": 1})
    trainer(first).fit(Regressor(manual=True), _data())
    torch.manual_seed(0)
    module = Regressor(manual=True)
    second = OptiscopeCallback(project="pl", name="resume", attach_options={"log_every": 1})
    trainer(second).fit(module, _data(), ckpt_path=str(tmp_path / "step=3.ckpt"))
    assert second.logger.last_run_id == first.logger.last_run_id

    series = stored_series(srv.api, srv.headers, first.logger.last_run_id)
    steps, values = series["loss"]
    assert steps == list(range(STEPS))  # steps 3-5 trained twice, stored once
    assert values[3:] == pytest.approx(module.losses, rel=1e-6)  # the second life's values
    assert series["grad_norm/net.0.weight"][0] == list(range(STEPS))


class ClippedRegressor(Regressor):
    """Records the gradient norms Lightning is about to clip: the values the probe must report."""

    def __init__(self) -> None:
        super().__init__()
        self.pre_clip: list[dict[str, float]] = []

    def on_before_optimizer_step(self, optimizer) -> None:  # noqa: ANN001
        self.pre_clip.append({n: float(p.grad.norm()) for n, p in self.named_parameters()})


def test_automatic_optimization_reports_this_steps_gradients_before_clipping(live_server, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))
    torch.manual_seed(0)
    module = ClippedRegressor()
    callback = OptiscopeCallback(project="pl", attach_options={"log_every": 2})
    _trainer(callback, gradient_clip_val=1e-3).fit(module, _data())
    series = stored_series(srv.api, srv.headers, callback.logger.last_run_id)
    for name in ("net.0.weight", "net.2.bias"):
        steps, values = series[f"grad_norm/{name}"]
        assert steps == list(range(STEPS))
        assert values == pytest.approx([g[name] for g in module.pre_clip], rel=1e-5)
    assert min(g["net.0.weight"] for g in module.pre_clip) > 1e-2  # far above the clip: clipped would differ
