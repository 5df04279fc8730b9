"""Planning: an LLM writes the program. The planner and its repairs (`planner.py`), prompts and
in-context examples (`prompts.py`, `examples/`), LLM clients (`chat.py` the protocol, `llm.py`
OpenAI-compatible, `llm_local.py` a local model with grammar-constrained decoding from
`llm_grammar.py`), the program cache (`program_cache.py`), and the planning loop (`loop.py`:
plan, run, look back with the checks of `checks.py` and the critic of `critic.py`, select;
agent mode's rounds, with its budgets and what a Look shows in `agent.py`)."""
