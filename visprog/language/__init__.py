"""The language: programs (`program.py`), the parser and its fast path (`parser.py`,
`fastparse.py`, `strings.py`), the checker (`checker.py`) and Eval's own expression language
(`expr.py`). Nothing here runs a tool."""
