"""The Textual TUI: watch agents act live and replay logged episodes."""
