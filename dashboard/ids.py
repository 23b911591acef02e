"""Component ids, prefixed by page (``runs-``, ``run-``, ``cmp-``, ``shell-``) so that pages can
never collide inside the single Dash layout tree; callbacks and tests import them from here."""

from __future__ import annotations

# shell
SHELL_SELECTION = "shell-selection"  # runs picked on the runs page, read by the compare link
SHELL_CSRF = "shell-csrf"  # this session's CSRF value: State of every mutating callback (require_write)

# runs page
RUNS_TABLE = "runs-table"
RUNS_SEARCH = "runs-search"
RUNS_STATUS = "runs-status"
RUNS_PROJECT = "runs-project"
RUNS_TAG = "runs-tag"
RUNS_REFRESH = "runs-refresh"
RUNS_COUNT = "runs-count"
RUNS_COMPARE_LINK = "runs-compare-link"
RUNS_DELETE = "runs-delete"
RUNS_CONFIRM = "runs-confirm"
RUNS_MESSAGE = "runs-message"
RUNS_INTERVAL = "runs-interval"
RUNS_VERSION = "runs-version"  # bumped after a delete so the table reloads
RUNS_FILTER = "runs-filter"  # free-text conditions evaluated by the server ("optimizer = normuon, lr >= 0.01")
RUNS_COLUMNS = "runs-columns"  # the column chooser: any config key or summary metric
RUNS_SEEN = "runs-seen"  # the query of the rows shown and the server time they were read at

# run page
RUN_ID = "run-id"  # Store: the run id of the page
RUN_HEADER = "run-header"
RUN_TABS = "run-tabs"
RUN_TAB_BODY = "run-tab-body"
RUN_INTERVAL = "run-interval"
RUN_CURSOR = "run-cursor"  # Store: live-append cursor
RUN_STATE = "run-state"  # Store: status etc. refreshed by the interval
RUN_URL_SINK = "run-url-sink"
RUN_LAYER = "run-layer"
RUN_STEP = "run-step"
RUN_SOURCE = "run-source"
RUN_X = "run-x"
RUN_SMOOTH = "run-smooth"
RUN_LOG = "run-log"
RUN_KEYS = "run-keys"
RUN_KEYS_SELECT = "run-keys-select"  # the scalar picker (options searched on the server side)
RUN_ROWS = "run-rows"  # rows of the all-layer heatmaps: every layer, per block, or one block
RUN_FOLLOW = "run-follow"  # the step slider follows the newest step only when this is ticked
RUN_TAB_NOTE = "run-tab-note"  # which tabs are hidden for lack of data, and the option that enables each
RUN_EXPORT = "run-export"  # dcc.Download of a panel's data as CSV
RUN_IB_THRESHOLD = "run-ib-threshold"
RUN_SCALARS = "run-scalars"  # container of the scalar graphs
RUN_SCALAR_GRAPH = "run-scalar-graph"  # pattern-matching type {"type": ..., "key": key}
RUN_SPEC_HEATMAP = "run-spec-heatmap"
RUN_SPEC_AT_STEP = "run-spec-at-step"
RUN_SPEC_SUMMARY = "run-spec-summary"
RUN_SPEC_METRIC = "run-spec-metric"
RUN_NEURON_DIST = "run-neuron-dist"
RUN_NEURON_CV = "run-neuron-cv"
RUN_NEURON_FROZEN = "run-neuron-frozen"
RUN_NEURON_V = "run-neuron-v"
RUN_NEURON_ROWS = "run-neuron-rows"
RUN_GDIFF_PARTS = "run-gdiff-parts"
RUN_GDIFF_SPROJ = "run-gdiff-sproj"
RUN_GDIFF_BETA = "run-gdiff-beta"
RUN_GDIFF_SUMMARY = "run-gdiff-summary"
RUN_GDIFF_NOISE = "run-gdiff-noise"
RUN_GDIFF_KL = "run-gdiff-kl"
RUN_KFAC_EIGS = "run-kfac-eigs"
RUN_KFAC_DAMPING = "run-kfac-damping"
RUN_KFAC_SPECTRUM = "run-kfac-spectrum"
RUN_IB_PRUNED = "run-ib-pruned"
RUN_IB_SAVED = "run-ib-saved"
RUN_IB_CLASS = "run-ib-class"
RUN_LAYERS_QUANTITY = "run-layers-quantity"  # the Layers tab's pick of a per-layer quantity
RUN_LAYERS_HEATMAP = "run-layers-heatmap"
RUN_LAYERS_LINE = "run-layers-line"
RUN_ALERTS = "run-alerts"
RUN_CONFIG = "run-config"
RUN_STEP_LABEL = "run-step-label"

# compare page
CMP_RUNS = "cmp-runs"
CMP_KEYS = "cmp-keys"
CMP_X = "cmp-x"
CMP_SMOOTH = "cmp-smooth"
CMP_LOG = "cmp-log"
CMP_SCALARS = "cmp-scalars"
CMP_LAYER = "cmp-layer"
CMP_SOURCE = "cmp-source"
CMP_MATCH = "cmp-match"
CMP_AT = "cmp-at"
CMP_SPEC_OVERLAY = "cmp-spec-overlay"
CMP_SPEC_GRID = "cmp-spec-grid"
CMP_NEURON_OVERLAY = "cmp-neuron-overlay"
CMP_NEURON_BOX = "cmp-neuron-box"
CMP_CONFIG_DIFF = "cmp-config-diff"
CMP_TTT_KEY = "cmp-ttt-key"
CMP_TTT_TARGET = "cmp-ttt-target"
CMP_TTT_DIRECTION = "cmp-ttt-direction"
CMP_TTT_BASELINE = "cmp-ttt-baseline"
CMP_TTT_TABLE = "cmp-ttt-table"
CMP_URL_SINK = "cmp-url-sink"
CMP_MESSAGE = "cmp-message"
CMP_META = "cmp-meta"
CMP_KEYS_SELECT = "cmp-keys-select"
CMP_LT_QUANTITY = "cmp-lt-quantity"  # per-layer over time: the diagnostic
CMP_LT_LAYER = "cmp-lt-layer"  # a layer, or an all-layer aggregate (median / max over layers)
CMP_LT_BLOCK = "cmp-lt-block"  # restrict the aggregate to one block
CMP_LT_X = "cmp-lt-x"
CMP_LT_GRAPH = "cmp-lt-graph"
CMP_LT_SECTION = "cmp-lt-section"
CMP_LT_SEEN = "cmp-lt-seen"  # true once the per-layer graph has scrolled into view (it is drawn from then on)
CMP_EXPORT = "cmp-export"


def control_id(name: str) -> str:
    """The wrapper of one run-page control (``run-control-<name>``), shown or hidden per tab."""
    return f"run-control-{name}"


def tab_body_id(tab: str) -> str:
    """The body of one run-page tab (``run-tab-<tab>``)."""
    return f"run-tab-{tab}"
