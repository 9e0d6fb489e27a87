"""Outreach: playbooks decide which at-risk accounts get which task, and the holdout measures whether acting helped."""
