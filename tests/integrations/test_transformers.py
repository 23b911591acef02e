"""The Hugging Face Trainer integration, through the real ``transformers.Trainer`` into a real server.

Checked against values the test gets independently: the Trainer's own ``log_history`` (loss, pre-clip
grad norm), the model's own parameter names, and the Trainer's ``global_step``.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import probe
from probe.integrations.transformers import OptiscopeCallback, rename_logs
from probe.optim import NorMuon, hybrid_param_groups
from tests.integrations.stored import stored_run, stored_series

STEPS = 6
SEQ = 16


class Tokens(torch.utils.data.Dataset):
    """Deterministic random token sequences (labels = inputs: causal LM)."""

    def __init__(self, n: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(tmp_path, **kw) -> TrainingArguments:  # noqa: ANN001
    base = dict(output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=4,
                logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                max_grad_norm=0.5, learning_rate=1e-3, disable_tqdm=True, dataloader_num_workers=0,
                run_name="hf-test")
    base.update(kw)
    return TrainingArguments(**base)


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2))


def _client_env(monkeypatch, srv) -> None:  # noqa: ANN001
    monkeypatch.setenv("OPTISCOPE_URL", srv.url)
    monkeypatch.setenv("OPTISCOPE_TOKEN", srv.token)
    monkeypatch.setenv("OPTISCOPE_HOME", str(srv.home / "client"))


def test_rename_logs_puts_train_and_eval_under_their_prefix() -> None:
    assert rename_logs({"loss": 2.0, "grad_norm": 3, "eval_loss": 1.5, "note": "x", "flag": True}) == {
        "train/loss": 2.0, "train/grad_norm": 3.0, "eval/loss": 1.5}


def test_trainer_adamw_gpt2_stores_the_trainers_numbers_at_global_step(live_server, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    _client_env(monkeypatch, srv)
    model = _gpt2()
    callback = OptiscopeCallback(project="hf", attach_options={"log_every": 2})
    trainer = Trainer(model=model, args=_args(tmp_path, eval_strategy="steps", eval_steps=3),
                      train_dataset=Tokens(64, 64), eval_dataset=Tokens(8, 64, seed=1), callbacks=[callback])
    trainer.train()
    run_id = callback.last_run_id
    series = stored_series(srv.api, srv.headers, run_id)

    history = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    steps, values = series["train/loss"]
    assert steps == list(range(1, STEPS + 1))  # contiguous, once each, at global_step
    assert values == pytest.approx([h["loss"] for h in history], rel=1e-6)
    # the Trainer's grad_norm is the norm before its clip at 0.5: forwarded as it is
    steps, values = series["train/grad_norm"]
    assert values == pytest.approx([h["grad_norm"] for h in history], rel=1e-6)
    assert max(values) > 0.5, "the test needs gradients larger than the clip to mean anything"
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert series["eval/loss"][0] == [h["step"] for h in evals] == [3, 6]

    # the probe's own diagnostics: at the same steps, for every trainable parameter, under the model's names
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    per_layer = {k.split("/", 1)[1] for k in series if k.startswith("grad_norm/")}
    assert per_layer == names
    for key in (f"grad_norm/{n}" for n in names):
        assert series[key][0] == list(range(1, STEPS + 1)), key
    run = stored_run(srv.api, srv.headers, run_id)
    assert run["status"] == "finished"
    assert run["config"]["training_args"]["max_steps"] == STEPS
    assert run["config"]["model"]["n_embd"] == 32
    assert run["optimizer"] == "AdamW"


def test_trainer_with_normuon_on_a_llama_style_model(live_server, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    _client_env(monkeypatch, srv)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ))
    optimizer = NorMuon(hybrid_param_groups(model, adamw_lr=1e-3), lr=0.02)
    callback = OptiscopeCallback(project="hf", attach_options={"log_every": 3, "internals_every": 1})
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=Tokens(64, 64), callbacks=[callback],
                      optimizers=(optimizer, None))
    trainer.train()
    series = stored_series(srv.api, srv.headers, callback.last_run_id)
    assert series["train/loss"][0] == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in series["train/loss"][1])
    internals = [k for k in series if k.startswith("normuon.")]
    assert internals, sorted(series)[:20]
    assert stored_run(srv.api, srv.headers, callback.last_run_id)["optimizer"] == "NorMuon"


def test_attach_sees_through_accelerated_optimizer_and_rejects_strangers() -> None:
    from accelerate.optimizer import AcceleratedOptimizer

    from probe.integrations.wrappers import unwrap_optimizer

    inner = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert unwrap_optimizer(AcceleratedOptimizer(inner, device_placement=False)) is inner
    with pytest.raises(TypeError, match="builtins.object"):
        unwrap_optimizer(object())
    run = probe.init(mode="disabled")
    model = torch.nn.Linear(2, 2)
    monitor = probe.attach(model, AcceleratedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                                       device_placement=False), run=run)
    monitor.detach()


def test_trainer_resumed_from_a_checkpoint_continues_the_run_without_duplicates(live_server, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    srv = live_server()
    _client_env(monkeypatch, srv)
    args = _args(tmp_path, save_strategy="steps", save_steps=3)
    first = OptiscopeCallback(project="hf")
    Trainer(model=_gpt2(), args=args, train_dataset=Tokens(64, 64), callbacks=[first]).train()

    second = OptiscopeCallback(project="hf")
    trainer = Trainer(model=_gpt2(), args=args, train_dataset=Tokens(64, 64), callbacks=[second])
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert second.last_run_id == first.last_run_id

    series = stored_series(srv.api, srv.headers, first.last_run_id)
    steps, values = series["train/loss"]
    assert steps == list(range(1, STEPS + 1))  # steps 4-6 trained twice, stored once
    resumed = [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > 3]
    assert values[3:] == pytest.approx(resumed, rel=1e-6)  # the second life's values
    assert series["grad_norm/transformer.wte.weight"][0] == list(range(1, STEPS + 1))
