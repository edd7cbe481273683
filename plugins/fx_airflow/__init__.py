"""fx's Airflow pieces that the triggerer must import: the completion trigger, its operator and hook.

They live in ``plugins/`` (on every Airflow component's ``sys.path``), not in ``dags/``.
"""
