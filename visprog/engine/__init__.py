"""The engine: the one execution core (`core.py`: what a step means, one loop for every way of
running), the scheduler (`schedule.py`: which ready calls run together, batch sizes), the step
cache (`cache.py`), and the lone and batched schedules (`interpreter.py`, `batch.py`)."""
