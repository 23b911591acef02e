"""Figure builders and series shaping as plain functions: no server, no browser."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dashboard import figures as F
from dashboard.api import NotFound, _safe_id, to_float, to_floats
from dashboard.components import flatten, fmt_duration, fmt_value, speedup_text
from dashboard.series import ema, layer_grid, relative_time, steps_to_samples


def _titles(fig) -> tuple[str, str, str]:
    return fig.layout.title.text, fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def test_line_figure_has_title_axis_titles_and_fixed_trace_layout() -> None:
    fig = F.line_figure([F.Line("loss", [0, 1, 2], [1.0, 0.5, 0.25])], title="loss", x_title="step",
                        y_title="loss (value)", smoothing=0.5, uirevision="r")
    assert _titles(fig) == ("loss", "step", "loss (value)")
    # raw, EMA, non-finite markers: the live page patches traces 0/1/2 by index
    assert len(fig.data) == 3
    assert list(fig.data[0].y) == [1.0, 0.5, 0.25]
    assert len(fig.data[1].y) == 3 and fig.data[1].showlegend
    assert list(fig.data[2].x) == [] and fig.data[2].mode == "markers"
    assert fig.layout.uirevision == "r"


def test_line_figure_marks_non_finite_points_instead_of_dropping_them() -> None:
    fig = F.line_figure([F.Line("loss", [0, 1, 2, 3], [1.0, math.nan, math.inf, 0.5])], title="t", x_title="step",
                        y_title="y")
    markers = fig.data[-1]
    assert list(markers.x) == [1, 2]
    assert [t.split(": ")[1] for t in markers.text] == ["NaN", "+Inf"]
    assert list(markers.y) == [1.0, 1.0]  # drawn at the highest finite value
    assert markers.showlegend


def test_user_strings_are_escaped_in_titles_and_legends() -> None:
    name = "<script>alert(1)</script>"
    fig = F.line_figure([F.Line(name, [0], [1.0]), F.Line("b", [0], [2.0])], title=f"run {name}", x_title="step",
                        y_title="y")
    assert "<script>" not in fig.layout.title.text
    assert fig.layout.title.text == "run &lt;script&gt;alert(1)&lt;/script&gt;"
    assert fig.data[0].name == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert "<script>" not in fig.data[0].hovertemplate


def test_redraw_only_charts_carry_no_placeholder_traces() -> None:
    lines = [F.Line("a", [0, 1], [1.0, 2.0]), F.Line("b", [0, 1], [2.0, math.nan])]
    fig = F.line_figure(lines, title="t", x_title="step", y_title="y", live=False, compact=True)
    assert [t.name for t in fig.data] == ["a", "b", "non-finite (NaN/Inf)"]
    assert '"bdata"' in fig.to_json()


def test_empty_figure_says_how_to_get_data() -> None:
    fig = F.line_figure([F.Line("x", [], [])], title="spectra", x_title="step", y_title="σ",
                        empty_message="no spectra logged yet — enable them with probe.attach(...)")
    assert F.is_empty(fig)
    assert fig.layout.title.text == "spectra"
    assert "enable them with probe.attach" in fig.layout.annotations[0].text
    assert F.is_empty(fig.to_plotly_json())


def test_heatmap_log_colour_is_compact_and_says_log10() -> None:
    fig = F.heatmap_figure([0, 10], [1, 2], [[1.0, 100.0], [None, 0.0]], title="σ", x_title="step",
                           y_title="index", colorbar_title="σ", log_color=True)
    z = np.array(fig.data[0].z, dtype=float)
    assert z[0].tolist() == [0.0, 2.0]
    assert np.isnan(z[1]).all()  # missing and log10(0) are gaps, not -inf
    assert fig.data[0].colorbar.title.text == "log10 σ" and "log10 value" in fig.data[0].hovertemplate
    assert '"bdata"' in fig.to_json()  # a typed array on the wire, not 30k numbers as text


def test_layer_heatmap_lists_layers_top_down() -> None:
    fig = F.heatmap_figure([0, 1], ["a.weight", "b.weight"], [[1, 2], [3, 4]], title="cond", x_title="step",
                           y_title="layer", colorbar_title="cond")
    assert fig.layout.yaxis.type == "category" and fig.layout.yaxis.autorange == "reversed"


@pytest.mark.parametrize("mode", ["hist", "ecdf", "box"])
def test_distribution_figure_modes_count_non_finite(mode: str) -> None:
    fig = F.distribution_figure([("run a", [1.0, 2.0, math.nan]), ("run b", [1.0, 3.0])], title="norms",
                                x_title="‖ΔW_row‖₂", mode=mode)
    assert len(fig.data) == 2
    assert fig.data[0].name == "run a (1 non-finite)"
    assert fig.layout.showlegend
    if mode == "ecdf":
        assert list(fig.data[1].y) == [0.5, 1.0]


@pytest.mark.parametrize("n", [1, 5, 8, 20])
def test_small_multiples_grid_domains_stay_inside_the_figure(n: int) -> None:
    fig = F.small_multiples([(f"run {i}", [("w", [3.0, 2.0, 1.0])]) for i in range(n)], title="spectra",
                            x_title="index", y_title="σ")
    axes = [v for k, v in fig.layout.to_plotly_json().items() if k.startswith(("xaxis", "yaxis"))]
    assert len(axes) == 2 * n and all(0 <= d <= 1 for a in axes for d in a["domain"])


def test_small_multiples_one_panel_per_run_and_skips_empty() -> None:
    fig = F.small_multiples([("a", [("w", [3, 2, 1])]), ("b", [("w", [])]), ("c", [("w", [2, 1])])],
                            title="spectra", x_title="index", y_title="σ")
    assert [a.text for a in fig.layout.annotations] == ["a", "c"]
    assert len(fig.data) == 2 and fig.data[0].showlegend and not fig.data[1].showlegend


def test_ema_is_debiased_skips_nan_and_continues_from_state() -> None:
    flat, _ = ema([2.0, 2.0, 2.0], 0.9)
    assert flat == pytest.approx([2.0, 2.0, 2.0])  # debiased: no drag towards 0
    assert set(ema([0.02] * 200, 0.8)[0]) == {0.02}  # exactly flat: no float noise for autorange to zoom into
    vals = [1.0, math.nan, 3.0, 4.0, 5.0]
    full, _ = ema(vals, 0.6)
    assert math.isnan(full[1]) and math.isfinite(full[2])
    first, state = ema(vals[:2], 0.6)
    rest, _ = ema(vals[2:], 0.6, state=state)
    assert first[:1] + rest == pytest.approx([full[0]] + full[2:])


def test_layer_grid_keeps_spikes_and_marks_empty_bins() -> None:
    grid = layer_grid({"a": ([0, 1, 2, 3], [1.0, 50.0, 1.0, 1.0]), "b": ([0, 3], [2.0, math.nan])}, bins=2)
    assert grid.layers == ["a", "b"]
    assert grid.z[0] == [50.0, 1.0]  # the spike at step 1 survives binning
    assert grid.z[1][0] == 2.0 and math.isnan(grid.z[1][1])


def test_steps_to_samples_and_relative_time() -> None:
    assert steps_to_samples([0, 5, 10], [0, 10], [0.0, 1280.0]) == [0.0, 640.0, 1280.0]
    assert all(math.isnan(v) for v in steps_to_samples([1], [], []))
    assert relative_time([100.0, 101.5], 100.0) == [0.0, 1.5]


def test_wire_floats_decode_and_run_ids_are_validated_before_any_request() -> None:
    assert to_floats([1, "NaN", "Infinity", "-Infinity", None])[:1] == [1.0]
    assert math.isnan(to_float("NaN")) and to_float("Infinity") == math.inf and to_float("-Infinity") == -math.inf
    for bad in ("../runs", "a/b", "", "x" * 65, "ü"):
        with pytest.raises(NotFound):
            _safe_id(bad)
    assert _safe_id("abc_DEF-1") == "abc_DEF-1"


def test_formatting_helpers() -> None:
    assert fmt_value(math.nan) == "NaN" and fmt_value(-math.inf) == "-Inf" and fmt_value(1234) == "1,234"
    assert fmt_duration(5.25) == "5.2 s" and fmt_duration(3725) == "1h 02m"
    assert speedup_text(None) == "—" and speedup_text(1.976) == "1.98×"
    assert flatten({"opt": {"lr": 0.1, "betas": [0.9, 0.95]}, "seed": 1}) == {"opt.lr": 0.1, "opt.betas": [0.9, 0.95],
                                                                              "seed": 1}


def test_scalar_y_titles_name_the_key_or_its_unit_never_a_bare_value() -> None:
    from dashboard.series import y_title

    assert y_title("loss") == "loss"
    assert y_title("val_acc") == "val_acc (fraction)"
    assert y_title("lr") == "learning rate"
    assert "(value)" not in y_title("val_loss")


def _decoded(obj):
    """A figure's JSON with plotly.js typed-array specs turned back into lists (what the browser sees)."""
    import base64

    if isinstance(obj, dict):
        if set(obj) >= {"dtype", "bdata"}:
            return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"])).tolist()
        return {k: _decoded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_decoded(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def test_wire_figure_sends_what_plotly_would_without_copying_the_figure() -> None:
    from dashboard import group_figures as GF

    lines = [F.Line(f"seed {s}", [0, 10, 20, 30], [1.0 + s, 0.5, math.nan, 0.25 * s]) for s in range(3)]
    band = GF.band_figure([GF.group_curve("muon", lines, band="minmax", color="#1f77b4")], title="loss",
                          x_title="step", y_title="loss", band="minmax", show_members=True)
    dist = F.distribution_figure([("a", [0.1, 0.2, math.nan]), ("b", [0.3])], title="n", x_title="x", mode="ecdf")
    for fig in (band, dist, F.empty_figure("t", "nothing yet")):
        fast = fig.to_plotly_json()
        # the same figure as plotly's own to_dict (deep copy + walk of every value) sends
        same = [json.dumps(_decoded(f), sort_keys=True) for f in (fast, F.go.Figure.to_dict(fig))]  # NaN == NaN
        assert same[0] == same[1]
        # long vectors travel base64-encoded, not as JSON text
        assert all(isinstance(t["y"], dict) and "bdata" in t["y"] for t in fast["data"] if len(t.get("y", [])))
    before = [np.array(t.y, copy=True) for t in band.data]
    band.to_plotly_json()
    assert all(np.array_equal(np.asarray(t.y), b, equal_nan=True) for t, b in zip(band.data, before))
