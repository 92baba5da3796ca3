"""The commands (console scripts); each module parses its arguments and calls the layers below (see
documentation/architecture.md)."""
