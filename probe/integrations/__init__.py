"""One-line integrations with the training stacks people use.

- ``probe.integrations.transformers.OptiscopeCallback`` — a Hugging Face ``TrainerCallback``.
- ``probe.integrations.lightning.OptiscopeCallback`` — a Lightning ``Callback`` that also installs
  ``OptiscopeLogger`` (use the logger alone as ``Trainer(logger=...)`` if you only want metrics).
- ``probe.integrations.wrappers.unwrap_optimizer`` — what ``probe.attach`` uses to see through
  ``AcceleratedOptimizer``, ``LightningOptimizer`` and other wrappers exposing ``.optimizer``.

Nothing is imported until a submodule is: ``import probe`` never pulls in transformers or Lightning.
"""
