"""The steps of a run, shared by the DAG and `fx extract --local`: plan, aggregate, verify, publish."""
