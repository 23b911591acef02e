"""``optiscope demo``: serve the dashboard and train real models live with every optimizer.

* :mod:`probe.demo.cli` — the ``optiscope demo`` sub-command (argument parsing only).
* :mod:`probe.demo.orchestrator` — starts ``optiscope serve``, runs the trainings in a small pool of worker
  processes with progress bars, checks that every point arrived, prints the time-to-target tables.
* :mod:`probe.demo.train` — one training run with ``probe.init`` + ``probe.attach``, like a user's loop.
* :mod:`probe.demo.specs` — which runs, with which budgets, compared how.
* :mod:`probe.demo.datasets`, :mod:`probe.demo.models` — data every machine has and small models.

Nothing is imported here, so ``optiscope --help`` does not pay for torch.
"""
