"""The weekly executive digest: its data, sections, charts, rendering and publishing."""
