"""The weekly executive digest: its data, sections, charts, rendering and publishing.

``build`` composes the digest (``build_digest``) from ``data`` (warehouse reads) and
``sections`` (the maths) into a ``report.Digest``; ``charts`` draws it, ``render`` formats it
and ``publish`` writes and mails it (``publish_digest``).
"""
