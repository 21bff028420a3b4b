"""agentbus benchmarks: ``python -m bench`` runs them all and prints one table.

Each agentbus figure is measured beside its baseline in the same run (raw redis-py doing the same
work with no agentbus code, and NATS request-reply as a peer) and reported as a ratio. Modules:

* ``stats``: latency/throughput summaries and result rows;
* ``machine``: what the run was measured on (CPU, RAM, versions, load);
* ``servers``: throwaway redis-server and nats-server processes;
* ``procs``: worker processes (spawned) with an event loop of choice;
* ``raw``: raw redis-py and NATS baselines;
* ``registry``, ``messaging``, ``fleet``: the agentbus measures;
* ``cli``: the command (``--quick`` for the smoke test, ``--json`` for the output file).
"""
