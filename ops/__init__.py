"""Operations: the local stack (``python -m ops``, behind ``make up``, ``down``, ``status``,
``clean-stack``), the demo, and the own-stack fixtures that bench and tests share.

One module per job: ``process`` (a :class:`~ops.process.Service` started detached and stopped by
PID), one per service (``kafka``, ``neo4j``, ``redis``, ``redis_cluster``, ``airflow``, ``workers``),
``secrets``, ``stack`` (them all, in start order) and ``fixtures``. ops sits above fx_workers, plugins
and dags and below bench and tests (``tests/unit/test_layering.py``).
"""
