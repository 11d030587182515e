"""The app layer: the command line, the demo, the report and the pictures (docs/design.md §8)."""
