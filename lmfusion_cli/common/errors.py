"""The user-error type: one sentence naming the bad input and the fix.

The CLI turns a `UserError` into that sentence on stderr and exit code 2; a traceback is shown only
with `--verbose`. Library code raises it for bad *input* (files, configs, options); bugs stay ordinary
exceptions."""


class UserError(Exception):
    """Bad input from the user. `str(err)` is the single sentence shown to them."""

    exit_code = 2
