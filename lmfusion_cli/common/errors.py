"""The user-error type: one sentence naming the bad input and the fix.

The CLI turns a `UserError` into that sentence on stderr and exit code 2; a traceback is shown only
with `--verbose`. Library code raises it for bad *input* (files, configs, options); bugs stay ordinary
exceptions."""

import re


class UserError(Exception):
    """Bad input from the user. `str(err)` is the single sentence shown to them."""

    exit_code = 2


def what_was_refused(message: str) -> str:
    """What a weights-only unpickler refused, as a phrase (from torch's or our own error message)."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(r"GLOBAL ([\w.]+)", message)
    if not m and "invalid load key" in message:
        return "bytes that are not a pickle of tensors (invalid load key)"
    if m:
        return f"a reference to the Python object {m.group(1)}"
    m = re.search(r"Unsupported operand (\d+)", message)
    return f"a pickle opcode that is not data ({m.group(0)})" if m else "Python objects other than tensors"
