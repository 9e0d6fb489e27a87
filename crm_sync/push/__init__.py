"""Push account health fields and outreach tasks to Salesforce, safely.

Why a package rather than a few ``sf.Account.update`` calls, module by module:

* :mod:`crm_sync.push.accounts` writes the health fields. The CRM only moves forward, and
  only what changed is written: accounts whose score is older than what the CRM holds are
  skipped, and accounts that did not change by :func:`crm_sync.fields.material_change` cost
  no call.
* :mod:`crm_sync.push.tasks` creates the outreach tasks exactly once: a create whose response
  was lost is looked up by ``Churnflow_Key__c`` before any re-send (see its docstring), and
  :func:`crm_sync.push.tasks.task_payload` is the one place a task row becomes Task fields.
* :mod:`crm_sync.push.composite` and :mod:`crm_sync.push.bulk` are the two ways to write:
  composite sObject collections (200 records per call) below ``bulk_threshold``, the Bulk
  API 2.0 above it. Bulk row failures do not raise in simple-salesforce; they are read back
  and reported, or sent again when the cause is transient (``UNABLE_TO_LOCK_ROW``).
* :mod:`crm_sync.push.results` holds what a push did and records it in the intent ledger.

Every call goes through :func:`crm_sync.retry.call_with_retry` and every query through
:mod:`crm_sync.query` (quoted values, URI-safe IN lists).
"""
