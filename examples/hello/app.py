"""hello: the smallest beamctl app. on_start runs once per container; handler runs per task."""

import time

STARTED = time.monotonic()


def load_model():
    """Pretend to load a model: build a lookup table once per container."""
    return {"greeting": "hello", "loaded_after_s": round(time.monotonic() - STARTED, 3)}


def handler(context, **inputs):
    name = inputs.get("name", "world")
    return {"message": f"{context.on_start_value['greeting']}, {name}", "task": context.task_id}
