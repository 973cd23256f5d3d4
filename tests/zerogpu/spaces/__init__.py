"""A stand-in for Hugging Face's ``spaces`` package on a ZeroGPU Space, for tests (put this folder
first on ``PYTHONPATH``): ``spaces.GPU`` behaves as it does there, where it matters to an app.

* Off ZeroGPU (``SPACES_ZERO_GPU`` unset) the decorator returns the function unchanged, as the real
  one does.
* On "ZeroGPU" every call runs in a worker process forked for it. Its arguments cross the process
  boundary pickled, and so does everything it yields or returns (here as bytes through a pipe, so that
  what does not pickle fails as it would there).
* The call asks for ``duration`` seconds (a number, or a callable given the call's own arguments,
  as on the platform) and is killed when it outlives them: the caller then gets
  ``gr.Error("GPU task aborted", title="ZeroGPU worker error")``, the platform's message. Any other
  exception in the worker reaches the caller as ``gr.Error(<exception class name>)``, a ``gr.Error``
  as itself.
* A generator's values reach the caller while the call runs; closing it early ends the call.

For tests it also records every call (``$ZEROGPU_STANDIN_LOG``: one JSON line each: the duration asked
for, the wall time, the bytes of the arguments and of what came back, the values yielded, the string
arguments, how it ended) and injects faults read from ``$ZEROGPU_STANDIN_FAULTS`` (a JSON file read at
every call): ``{"abort_calls": [n, ...]}`` kills call ``n`` (1-based, in this process) after its first
yield, as the platform's abort would mid-chunk; ``{"delay_s": s}`` makes each worker wait ``s``
seconds before it starts (a slow GPU, a busy queue).
"""

from __future__ import annotations

import functools
import inspect
import json
import multiprocessing
import os
import pickle
import threading
import time

__all__ = ["GPU", "config"]
_FORK = multiprocessing.get_context("fork")
_LOCK = threading.Lock()
_CALLS = [0]


class config:  # noqa: N801 - the real package has ``spaces.config.Config.zero_gpu``
    @staticmethod
    def zero_gpu() -> bool:
        return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def GPU(task=None, *, duration=None, size=None, **kwargs):  # noqa: N802 - the real name
    """``@spaces.GPU``, ``@spaces.GPU(duration=...)``, ``@spaces.GPU(duration=callable, size=...)``."""
    if task is None:
        return lambda fn: GPU(fn, duration=duration, size=size, **kwargs)
    if not config.zero_gpu():
        return task

    @functools.wraps(task)
    def call(*args, **kw):
        seconds = duration(*args, **kw) if callable(duration) else (60 if duration is None else duration)
        seconds = float(getattr(seconds, "total_seconds", lambda: seconds)())
        stream = _call(task, args, kw, seconds, size)
        if inspect.isgeneratorfunction(task):
            return stream
        values = list(stream)
        return values[-1] if values else None

    return call


def _error(message: str, title: str | None = None):
    import gradio as gr

    return gr.Error(message, title=title) if title else gr.Error(message)


def _faults() -> dict:
    path = os.environ.get("ZEROGPU_STANDIN_FAULTS")
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _short(value) -> str:
    """A plain or dataclass argument as text when short (not tensors): to tell calls apart in the log."""
    import dataclasses

    if isinstance(value, (str, int, float)) or dataclasses.is_dataclass(value):
        text = repr(value)
        return text if len(text) <= 400 else ""
    return ""


def _log(record: dict) -> None:
    path = os.environ.get("ZEROGPU_STANDIN_LOG")
    if path:
        with _LOCK, open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _worker(task, payload: bytes, conn, delay: float, seconds: float) -> None:
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(max(0.5, seconds - 0.5), exit=False, file=sys.stderr)  # why it ran long, in the log
    try:
        args, kw = pickle.loads(payload)
        time.sleep(delay)
        result = task(*args, **kw)
        values = result if inspect.isgenerator(result) else [result]
        for value in values:
            conn.send_bytes(pickle.dumps(("value", value)))
        conn.send_bytes(pickle.dumps(("done", None)))
    except BaseException as err:  # noqa: BLE001 - reported to the caller, as the platform does
        import gradio as gr

        title = None if isinstance(err, gr.Error) else "ZeroGPU worker error"
        message = str(err) if isinstance(err, gr.Error) else type(err).__name__
        conn.send_bytes(pickle.dumps(("error", (message, title))))
    finally:
        conn.close()
        os._exit(0)  # not the parent's exit handlers: a worker leaves the app's files alone


def _call(task, args, kw, seconds: float, size):
    """The call as a generator of what the worker yields (module docstring)."""
    with _LOCK:
        _CALLS[0] += 1
        number = _CALLS[0]
    faults = _faults()
    abort = number in faults.get("abort_calls", ())
    payload = pickle.dumps((args, kw))
    parent, child = _FORK.Pipe(duplex=False)
    worker = _FORK.Process(target=_worker, args=(task, payload, child, float(faults.get("delay_s", 0.0)), seconds),
                           daemon=True)
    t0 = time.monotonic()
    worker.start()
    child.close()
    record = {"call": number, "function": task.__name__, "duration": seconds, "size": size, "bytes_in": len(payload),
              "bytes_out": 0, "yields": [], "args": [_short(a) for a in args if _short(a)], "outcome": "ok"}  # fmt: skip
    try:
        while True:
            left = seconds - (time.monotonic() - t0)
            if left <= 0 or not parent.poll(left):
                record["outcome"] = "aborted: past its duration"
                raise _error("GPU task aborted", "ZeroGPU worker error")
            try:
                data = parent.recv_bytes()
            except EOFError:
                record["outcome"] = "aborted: the worker died"
                raise _error("GPU task aborted", "ZeroGPU worker error") from None
            what, value = pickle.loads(data)
            record["bytes_out"] += len(data)
            if what == "error":
                record["outcome"] = f"error: {value[0]}"
                raise _error(*value)
            if what == "done":
                return
            record["yields"].append(type(value).__name__)
            yield value
            if abort:
                record["outcome"] = "aborted: fault injected"
                raise _error("GPU task aborted", "ZeroGPU worker error")
    except GeneratorExit:
        record["outcome"] = "closed by the caller"
        raise
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
        parent.close()
        record["wall"] = time.monotonic() - t0
        _log(record)
