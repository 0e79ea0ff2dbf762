"""What attaches to the model: each probe registers hooks, accumulates on device, detaches.

Probes never synchronise with the host while the model runs; ``Accumulators.fetch`` is
the single place where device numbers are brought back, once per report.
"""
