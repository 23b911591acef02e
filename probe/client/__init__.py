"""The probe's client: from ``run.log()`` to the server, surviving outages.

Modules, in the order data flows through them:

* ``run`` — ``init()`` and ``Run``: the hot path only appends to a bounded queue.
* ``batching`` — queued records → wire batches, tensors copied to the host in groups.
* ``sender`` — the one background thread: batch, POST, spool on trouble, replay, heartbeat, finish.
* ``transport`` — HTTP with retries/backoff; exactly two failure types (transient, permanent).
* ``spool`` — the durable on-disk queue of one run (``$OPTISCOPE_HOME/spool/<run_id>/``).
* ``sync`` / ``cli`` — ``optiscope sync``: replay spools left on disk.
* ``protocol`` — the wire format (a deliberate copy of the server's schemas, stdlib + numpy).
* ``config`` — ``ClientConfig.from_env``: url/token/home resolution and tuning.
* ``problems`` — failure counters with one warning per kind.

Nothing is imported here, so ``import probe.client`` stays free of side effects.
"""
