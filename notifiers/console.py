"""The built-in `console://` target: one readable line per notification in jobhook's own log.

It is an ordinary apprise plugin, registered with apprise's custom-notification decorator, so it is validated,
sent and reported exactly like slack:// or mailto://. Registration happens on import; `notifiers.targets`
imports this module, so `console://` is available wherever targets are loaded or sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, cast

from apprise.decorators import notify

log = logging.getLogger("jobhook.console")

MAX_BODY_CHARS = 300

_SendFunc = Callable[..., bool]
# apprise.decorators.notify is unannotated; give it its real shape so mypy --strict keeps the function typed.
_register = cast(Callable[..., Callable[[_SendFunc], _SendFunc]], notify)


_MARKDOWN = re.compile(r"\*\*|`|^\s*[-*] ", re.MULTILINE)


def one_line(text: str, limit: int = MAX_BODY_CHARS) -> str:
    """Markdown emphasis and bullets dropped, lines joined by ' · ', cut at `limit` characters with an ellipsis."""
    lines = [" ".join(line.split()) for line in _MARKDOWN.sub("", text).splitlines()]
    flat = " · ".join(line for line in lines if line)
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


@_register(on="console", name="jobhook console")
def console_notify(body: str, title: str, notify_type: str, *args: Any, **kwargs: Any) -> bool:
    """Log `[type] title — body` at INFO (WARNING for failures); logging cannot fail, so always report success."""
    kind = str(getattr(notify_type, "value", notify_type))  # apprise may hand us its NotifyType str-enum
    text = one_line(body)
    line = " — ".join(part for part in (one_line(title, 200), text) if part)
    log.log(logging.WARNING if kind == "failure" else logging.INFO, "[%s] %s", kind, line)
    return True
