"""The integrations under real ``torchrun`` with 2 gloo processes: one run per job, every step once."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lightning")

from tests.integrations.stored import stored_run, stored_series
from tests.integrations.torchrun import torchrun

HF_JOB = '''
import json, torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from probe.integrations.transformers import OptiscopeCallback

class Tokens(torch.utils.data.Dataset):
    def __init__(self):
        self.ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
args = TrainingArguments(output_dir="out", max_steps=5, per_device_train_batch_size=4, logging_steps=1,
                         report_to=[], save_strategy="no", use_cpu=True, ddp_backend="gloo", disable_tqdm=True,
                         max_grad_norm=0.5)
cb = OptiscopeCallback(project="ddp")
trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb])
trainer.train()
if trainer.is_world_process_zero():
    history = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    print(json.dumps({"run_id": cb.last_run_id, "grad_norms": [h["grad_norm"] for h in history],
                      "world": trainer.args.world_size}))
'''

PL_JOB = '''
import json, torch
from torch import nn
import lightning.pytorch as pl
from probe.integrations.lightning import OptiscopeCallback

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.automatic_optimization = False
    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(1), y)
        self.log("loss", loss)
        opt = self.optimizers()
        opt.zero_grad(); self.manual_backward(loss); opt.step()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

g = torch.Generator().manual_seed(0)
x = torch.randn(64, 8, generator=g)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=8)
cb = OptiscopeCallback(project="ddp", name="pl-ddp")
trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy="ddp", logger=False, callbacks=[cb],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1)
trainer.fit(M(), data)
if trainer.is_global_zero:
    print(json.dumps({"run_id": cb.logger.last_run_id, "world": trainer.world_size}))
'''


def _env(srv) -> dict[str, str]:  # noqa: ANN001
    return {"OPTISCOPE_URL": srv.url, "OPTISCOPE_TOKEN": srv.token, "OPTISCOPE_HOME": str(srv.home / "client")}


def _runs(srv) -> list[dict]:  # noqa: ANN001
    import httpx

    return httpx.get(f"{srv.api}/runs", headers=srv.headers, params={"project": "ddp"}).raise_for_status().json()["data"]


def test_hf_trainer_under_torchrun_makes_one_run_with_the_trainers_numbers(live_server, tmp_path) -> None:  # noqa: ANN001
    srv = live_server()
    out = torchrun(HF_JOB, tmp_path, _env(srv))
    assert out["world"] == 2
    assert [r["id"] for r in _runs(srv)] == [out["run_id"]]  # one run per job, not one per rank
    series = stored_series(srv.api, srv.headers, out["run_id"])
    assert series["train/loss"][0] == [1, 2, 3, 4, 5]
    assert series["train/grad_norm"][1] == pytest.approx(out["grad_norms"], rel=1e-6)
    names = {k.split("/", 1)[1] for k in series if k.startswith("grad_norm/")}
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert not any(n.startswith("module.") for n in names)  # DDP's wrapper prefix is not the user's name
    assert stored_run(srv.api, srv.headers, out["run_id"])["status"] == "finished"


def test_lightning_ddp_under_torchrun_makes_one_run(live_server, tmp_path) -> None:  # noqa: ANN001
    srv = live_server()
    out = torchrun(PL_JOB, tmp_path, _env(srv))
    assert out["world"] == 2
    assert [r["id"] for r in _runs(srv)] == [out["run_id"]]
    series = stored_series(srv.api, srv.headers, out["run_id"])
    assert series["loss"][0] == [0, 1, 2, 3]
    assert series["grad_norm/net.0.weight"][0] == [0, 1, 2, 3]
    assert stored_run(srv.api, srv.headers, out["run_id"])["status"] == "finished"
