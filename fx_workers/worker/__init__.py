"""The extraction worker, split the way arq splits one: :mod:`~fx_workers.worker.loop` consumes and
commits, :mod:`~fx_workers.worker.transport` is all of Kafka, :mod:`~fx_workers.worker.job` is what
becomes of one request (a plain function, tested with fakes), :mod:`~fx_workers.worker.reads` reads
the graph one batch ahead, and :mod:`~fx_workers.worker.health` keeps the health key."""

from fx_workers.worker.health import check_health
from fx_workers.worker.loop import Worker, serve
from fx_workers.worker.transport import default_worker_id

__all__ = ["Worker", "check_health", "default_worker_id", "serve"]
