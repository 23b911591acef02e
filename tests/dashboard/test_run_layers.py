"""A diagnostic of the user's own (the README's ``WeightNorm`` quantity) shows up on the run page like
the built-in ones: the Layers tab lists it, draws it for every layer over the steps and for one layer,
with the values the training computed — in real Chromium against the real server, from a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import probe
from probe.client.config import ClientConfig

from .test_browser import TIMEOUT_MS, graphs_with_data

STEPS = 12


class WeightNorm(probe.Quantity):
    name = "weight_norm"

    def measure(self, ctx, out, *, meanwhile=None):  # noqa: ANN001, ANN201
        norms = torch.stack(torch._foreach_norm([layer.weight() for layer in ctx.layers]))
        out.scalars([f"weight_norm/{layer.name}" for layer in ctx.layers] + ["weight_norm"],
                    torch.cat([norms, norms.max().reshape(1)]))


@pytest.fixture(scope="module")
def custom_run(server, tmp_path_factory) -> tuple[str, dict[str, list[float]]]:  # noqa: ANN001
    """Train a small MLP with the custom quantity; return its run id and the norms it should show."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    settings = ClientConfig(url=server.url, token=server.token, home=tmp_path_factory.mktemp("client"))
    run = probe.init("layers-tab", name="custom-quantity", settings=settings)
    monitor = probe.attach(model, opt, run=run, log_every=4, budget=None, quantities=[WeightNorm(every=1)])
    expected: dict[str, list[float]] = {name: [] for name, _ in model.named_parameters()}
    for _ in range(STEPS):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for name, p in model.named_parameters():
            expected[name].append(float(p.detach().norm()))
    monitor.detach()
    run.finish()
    return run.id, expected


def _figure(page, graph_id: str) -> dict:  # noqa: ANN001
    return page.evaluate(f"(() => {{ const g = document.querySelector('#{graph_id} .js-plotly-plot'); "
                         "return {title: ((g.layout || {}).title || {}).text || '', data: g.data.map(t => ({"
                         "x: Array.from(t.x || []), y: Array.from(t.y || []), "
                         "z: t.z ? Array.from(t.z, r => Array.from(r)) : null}))}; })()")


def _wait_title(page, graph_id: str, start: str) -> None:  # noqa: ANN001
    page.wait_for_function(
        "([id, s]) => { const g = document.querySelector('#' + id + ' .js-plotly-plot');"
        " return !!g && (((g.layout || {}).title || {}).text || '').startsWith(s); }",
        arg=[graph_id, start], timeout=TIMEOUT_MS)


@pytest.mark.browser
def test_a_custom_per_layer_quantity_shows_up_on_the_layers_tab(server, custom_run, page) -> None:  # noqa: ANN001
    run_id, expected = custom_run
    page.goto(server.url + f"/runs/{run_id}?tab=layers")
    graphs_with_data(page, "#run-tab-layers", 1)
    assert "Layers" in page.locator("#run-tabs .tab").all_inner_texts()
    page.locator("#run-layers-quantity").click()
    options = page.get_by_role("option").all_inner_texts()
    assert {"weight_norm", "update_ratio", "grad_norm"} <= set(options), options
    page.get_by_role("option", name="weight_norm", exact=True).first.click()
    _wait_title(page, "run-layers-heatmap", "weight_norm — all layers")
    heat = _figure(page, "run-layers-heatmap")["data"][0]
    layers = [str(v) for v in heat["y"]]
    assert set(layers) == set(expected)  # every layer, weights and biases
    z = np.asarray(heat["z"], dtype=float)
    for row, layer in zip(z, layers):
        drawn = row[~np.isnan(row)]
        # one value per logged step (or the max per bin); the largest is the layer's largest norm
        assert drawn.size > 0
        assert drawn.max() == pytest.approx(max(expected[layer]), rel=1e-5)

    # one layer over time: exactly the norms after each step
    page.locator("#run-layer").click()
    page.get_by_role("option", name="2.weight", exact=True).first.click()
    _wait_title(page, "run-layers-line", "weight_norm — 2.weight")
    line = _figure(page, "run-layers-line")["data"][0]
    assert line["x"] == list(range(STEPS))
    np.testing.assert_allclose(line["y"], expected["2.weight"], rtol=1e-5)
    assert page.errors == []
