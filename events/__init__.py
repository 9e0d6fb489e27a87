"""Event intake: webhooks (surveys, tickets, product failures) into a durable inbox, and the
functions the reaction flow (flows/react.py) uses to apply them. Comes right after ``ingest``
in the stage order: it maps and checks payloads with ingest's mapping language and contracts."""
