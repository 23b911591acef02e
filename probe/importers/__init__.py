"""Bring runs logged with other trackers (TensorBoard event files, MLflow stores) into Optiscope.

Each reader turns the peer's data into :class:`probe.importers.model.ImportedRun` (the public
wire format: a ``RunCreate`` body and ``Batch`` bodies), read with the peer's own library so its
file formats are parsed as the peer itself parses them. The run id is derived from the source,
and batch ids from the content, so importing the same source twice stores nothing new.
"""
