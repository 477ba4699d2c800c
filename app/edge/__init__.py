"""The edge: what every request meets before a protocol sees it.

Transport (one write per response), API keys, the body limit, request metrics, and the
fast path that answers the two hot routes with the same rules."""
