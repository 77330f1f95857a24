"""One module per CLI command: Typer options → a stage config → one stage function.

Commands import their stage lazily (inside the function) so `lmfusion --help` stays fast."""
