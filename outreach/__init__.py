"""Outreach: playbooks decide which at-risk accounts get which task, and the holdout measures whether acting helped.

``playbooks`` (the YAML language and loading), ``decisions`` (which accounts get which task;
the holdout), ``lift`` (churn with outreach against held-out matches) and ``task_table`` (the
``outreach_tasks`` table's reads and writes).
"""
