"""schemathesis hooks for the CLI run against a live server (test_live_server.py).

A long-poll (`GET /events?wait=S`) waits as long as it is asked when nothing
happens, up to the spec's 60 s, and the CLI would time it out: waits are cut to
half a second, which still checks that a wait ends with a valid page.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_WAIT = 0.5


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    query = case.query if isinstance(case.query, dict) else None
    if case.operation.path != "/events" or query is None:
        return
    try:
        if float(query.get("wait", 0)) > MAX_WAIT:
            query["wait"] = MAX_WAIT
    except (TypeError, ValueError):
        pass  # a malformed wait is a negative case: the server must refuse it as sent
