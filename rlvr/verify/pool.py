"""Scoring that cannot take the trainer down: task verifiers in worker processes.

A verifier runs on model output, and model output can make it hang (``10^{10^{10^{10}}}``
in sympy), crash the interpreter, or allocate without bound. ``VerifierPool`` scores in
worker processes: each item gets ``timeout_s``, after which its worker is SIGKILLed and
replaced; a worker that dies (segfault, ``os._exit``, MemoryError) is replaced too; an
exception in ``task.score`` becomes ``Score.error``. Every item gets a Score, in order, and
nothing a completion does reaches the caller as an exception.

Workers are started with multiprocessing's *spawn* method: a fresh interpreter inherits
none of the trainer's threads, locks, OpenMP/CUDA state or memory (``fork`` after torch is
loaded can deadlock), and unlike *forkserver* it shares no process-wide server whose preload
list other libraries may have fixed. A spawn costs ~0.5-1 s (imports plus ``warm_up``), paid
at start and after a kill, while the other workers go on scoring.

The task is pickled once and sent to each worker at its start, never per item, so it must be
picklable: a module-level class whose attributes are plain data (a task that loads a data
file should drop it in ``__getstate__``: workers only score). A task may define
``warm_up()``; a worker calls it before taking items so imports and caches do not count
against the first item's timeout. Each worker caps its address space (RLIMIT_AS) at
``memory_limit_mb`` above what it has mapped once warmed up.

A verifier that hangs costs ``timeout_s`` plus a worker restart per item, so the pool
watches its timeouts (``is_timeout`` tells a timed-out Score): a warning goes to stderr
(once) when half of a batch times out, and ``max_timeout_batches`` batches in a row in
which every item timed out raise ``VerifierTimeoutError``.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rlvr.tasks.base import Problem, Score, Task

ERROR_CHARS = 200  # longest error message kept in a Score
TIMEOUT_ERROR = "verifier timeout after"  # how a timed-out item's Score.error starts
WARN_TIMEOUT_FRAC = 0.5  # warn (once per pool) when this share of one batch timed out


class VerifierTimeoutError(RuntimeError):
    """Every verification of ``max_timeout_batches`` batches in a row timed out."""


def is_timeout(error: str | None) -> bool:
    """Whether a Score's ``error`` says that its verification timed out."""
    return error is not None and error.startswith(TIMEOUT_ERROR)


def error_score(message: str) -> Score:
    """A zero score that says why scoring failed (``message`` cut to ``ERROR_CHARS``)."""
    if len(message) > ERROR_CHARS:
        message = message[:ERROR_CHARS - 1] + "…"
    return Score(reward=0.0, correct=False, error=message)


def describe_exception(exc: BaseException) -> str:
    """``"TypeName: message"``; printing must not fail, whatever the exception holds."""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable message>"
    text = text[:ERROR_CHARS * 2]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def score_inline(task: Task, problem: Problem, completion: str) -> Score:
    """``task.score`` in this process, an exception turned into an error Score. No timeout
    and no memory limit: only for tasks whose scoring is trivially safe (``isolate`` False)."""
    try:
        score = task.score_completion(problem, completion)
    except Exception as e:
        return error_score(describe_exception(e))
    if not isinstance(score, Score):
        return error_score(f"task.score returned {type(score).__name__}, not Score")
    return score


class InlineVerifier:
    """The VerifierPool interface, scoring in this process with ``score_inline``."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def score_many(self, problems: list[Problem], completions: list[str]) -> list[Score]:
        """Every completion's score; a task with ``score_batch`` (one call over the batch, e.g. a
        TRL-style reward function deciding correctness) is scored that way, and sample by
        sample only if the batch call fails (each error then lands on its own sample)."""
        _check_lengths(problems, completions)
        score_batch = getattr(self.task, "score_batch", None)
        if score_batch is not None and problems:
            try:
                scores = score_batch(problems, [self.task.scored_text(c) for c in completions])
                if len(scores) == len(problems) and all(isinstance(s, Score) for s in scores):
                    return list(scores)
            except Exception:  # noqa: BLE001 (scored again one by one, which records each error)
                pass
        return [score_inline(self.task, p, c) for p, c in zip(problems, completions)]

    def close(self) -> None:
        pass

    def __enter__(self) -> InlineVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_verifier(task: Task, workers: int = 2, timeout_s: float = 5.0,
                  memory_limit_mb: int | None = 2048, isolate: bool | None = None,
                  max_timeout_batches: int = 3) -> VerifierPool | InlineVerifier:
    """A ``VerifierPool`` when ``isolate`` (default: the task's own ``isolate``), else an
    ``InlineVerifier``."""
    if getattr(task, "isolate", False) if isolate is None else isolate:
        return VerifierPool(task, workers=workers, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb,
                            max_timeout_batches=max_timeout_batches)
    return InlineVerifier(task)


# ----------------------------------------------------------------------------- the worker


def _limit_address_space(extra_mb: int) -> None:
    with open("/proc/self/status") as f:
        mapped_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = mapped_kb * 1024 + extra_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _exit_with_parent() -> None:
    """Exit when the parent does, even mid-item (a hung item would otherwise keep a CPU)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


def _worker_main(conn: multiprocessing.connection.Connection, task_bytes: bytes,
                 memory_limit_mb: int | None) -> None:
    """Load the task, say ready, then answer ``(index, problem, completion)`` messages with
    ``(index, score, keep_going)`` until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        task = pickle.loads(task_bytes)
        warm_up = getattr(task, "warm_up", None)
        if warm_up is not None:
            warm_up()
        if memory_limit_mb is not None:
            _limit_address_space(memory_limit_mb)
    except BaseException as e:
        _send_or_exit(conn, ("load_error", describe_exception(e)))
        return
    _send_or_exit(conn, ("ready", os.getpid()))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the pool closed the pipe: we are done
            return
        index, keep_going = None, True  # index None: "the item you sent me"
        try:
            index, problem, completion = pickle.loads(message)
            score = task.score_completion(problem, completion)
            if not isinstance(score, Score):
                score = error_score(f"task.score returned {type(score).__name__}, not Score")
        except MemoryError:
            # The heap may be left fragmented at the limit: report, then let a fresh worker take over.
            score = error_score(f"verifier crashed: MemoryError (address space capped at {memory_limit_mb} MB "
                                f"above the worker's baseline)")
            keep_going = False
        except BaseException as e:  # SystemExit too: a task must not end its worker quietly
            score = error_score(describe_exception(e))
        try:
            reply = pickle.dumps((index, score, keep_going))
        except Exception as e:
            unsendable = error_score(f"score cannot be sent back: {describe_exception(e)}")
            reply = pickle.dumps((index, unsendable, keep_going))
        _send_or_exit(conn, reply)
        if not keep_going:
            os._exit(0)


def _send_or_exit(conn: multiprocessing.connection.Connection, message: Any) -> None:
    """Send a message (bytes as they are, else pickled); exit quietly if the pool is gone."""
    try:
        conn.send_bytes(message if isinstance(message, bytes) else pickle.dumps(message))
    except OSError:
        os._exit(0)


# ----------------------------------------------------------------------------- the pool


@dataclass
class _Slot:
    """One worker process and what it is doing: starting, idle, or busy with ``item``."""

    process: Any  # multiprocessing.Process of the spawn context
    conn: multiprocessing.connection.Connection
    started: float
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0


class VerifierPool:
    """Scores ``task`` in ``workers`` spawned processes, ``timeout_s`` per item.

    ``score_many`` hands items to idle workers one at a time (a worker is never more than one
    item ahead, so a kill loses only the item that timed out) and returns a Score per item in
    input order. Not thread-safe: call it from one thread. Use as a context manager, or
    ``close()``.
    """

    def __init__(self, task: Task, workers: int = 2, timeout_s: float = 5.0,
                 memory_limit_mb: int | None = 2048, start_timeout_s: float = 120.0,
                 max_timeout_batches: int = 3) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0 seconds")
        if max_timeout_batches < 1:
            raise ValueError("max_timeout_batches must be >= 1")
        try:
            self._task_bytes = pickle.dumps(task)
        except Exception as e:
            if type(task).__module__.startswith("rlvr."):  # ours: the user can do nothing about it
                raise TypeError(
                    f"built-in task {type(task).__name__} cannot be pickled for the verifier workers "
                    f"({describe_exception(e)}): this is a bug in rlvr, please report it") from None
            raise TypeError(
                f"task {type(task).__name__} cannot be pickled for the verifier workers ({describe_exception(e)}); "
                "define it at module level and keep its attributes plain data") from None
        self.task_name = type(task).__name__
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_s = start_timeout_s
        self.respawns = 0  # workers replaced after a timeout or crash, for logging
        self.max_timeout_batches = max_timeout_batches
        self.all_timeout_batches = 0  # batches in a row in which every item timed out
        self._warned = False
        self._ctx = multiprocessing.get_context("spawn")
        self._closed = False
        self._slots = [self._spawn() for _ in range(workers)]

    # --------------------------------------------------------------------- public

    def score_many(self, problems: list[Problem], completions: list[str]) -> list[Score]:
        """One Score per (problem, completion), in order; failures are error Scores."""
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        _check_lengths(problems, completions)
        for i, slot in enumerate(self._slots):
            if slot.item is not None:  # left busy by an interrupted call: its answer would be misfiled
                self._replace(i)
        results: list[Score | None] = [None] * len(problems)
        pending = collections.deque(range(len(problems)))
        remaining = len(problems)
        while True:
            for i, slot in enumerate(self._slots):
                if not (slot.ready and slot.item is None and pending):
                    continue
                index = pending.popleft()
                try:
                    payload = pickle.dumps((index, problems[index], completions[index]))
                except Exception as e:
                    results[index] = error_score(f"item cannot be sent to a worker: {describe_exception(e)}")
                    remaining -= 1
                    continue
                if not self._send(i, index, payload):
                    pending.appendleft(index)  # the worker was already gone: not this item's fault
            if not remaining:
                self._watch_timeouts(results)  # type: ignore[arg-type]  # every entry is filled
                return results  # type: ignore[return-value]
            remaining -= self._wait_and_collect(results)

    def close(self) -> None:
        """Stop every worker (closing a worker's pipe ends it; a busy one is killed)."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            slot.conn.close()
        deadline = time.monotonic() + 1.0
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # at interpreter exit; daemon workers are reaped by multiprocessing anyway
                pass

    def _watch_timeouts(self, results: list[Score]) -> None:
        """Warn once when half of a batch timed out; raise after ``max_timeout_batches``
        batches in a row that timed out entirely."""
        if not results:
            return
        timeouts = sum(is_timeout(score.error) for score in results)
        self.all_timeout_batches = self.all_timeout_batches + 1 if timeouts == len(results) else 0
        advice = (f"raise verifier.timeout_s (now {self.timeout_s} s) if the task is slow but finite, add "
                  f"verifier.workers, or fix the task's score function ({self.task_name}) if it hangs")
        if self.all_timeout_batches >= self.max_timeout_batches:
            raise VerifierTimeoutError(
                f"every verification of the last {self.all_timeout_batches} batches timed out "
                f"(verifier.max_timeout_batches = {self.max_timeout_batches}); {advice}")
        if timeouts >= WARN_TIMEOUT_FRAC * len(results) and not self._warned:
            self._warned = True
            print(f"rlvr: warning: {timeouts} of {len(results)} verifications in a batch timed out after "
                  f"{self.timeout_s} s; each timeout costs that long plus a worker restart, shared by "
                  f"{len(self._slots)} worker(s); {advice} (metric verifier_timeout_frac)", file=sys.stderr)

    # --------------------------------------------------------------------- workers

    def _spawn(self) -> _Slot:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child_conn, self._task_bytes, self.memory_limit_mb),
                                    name=f"verifier-{self.task_name}", daemon=True)
        process.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        return _Slot(process=process, conn=parent_conn, started=time.monotonic())

    def _replace(self, i: int) -> None:
        slot = self._slots[i]
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join()
        slot.conn.close()
        self.respawns += 1
        self._slots[i] = self._spawn()

    def _send(self, i: int, index: int, payload: bytes) -> bool:
        slot = self._slots[i]
        try:
            slot.conn.send_bytes(payload)
        except OSError:  # BrokenPipeError and friends: the worker died since it last answered
            self._replace(i)
            return False
        slot.item, slot.deadline = index, time.monotonic() + self.timeout_s
        return True

    def _wait_and_collect(self, results: list[Score | None]) -> int:
        """Wait for a message, a worker's death or the nearest deadline; record what happened.
        Returns how many items got their Score."""
        deadlines = [s.deadline for s in self._slots if s.item is not None]
        deadlines += [s.started + self.start_timeout_s for s in self._slots if not s.ready]
        waitables: list[Any] = [s.conn for s in self._slots] + [s.process.sentinel for s in self._slots]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        signalled = multiprocessing.connection.wait(waitables, timeout=timeout)

        done = 0
        for i in range(len(self._slots)):
            slot = self._slots[i]
            dead = slot.process.sentinel in signalled
            if slot.conn in signalled:  # read before the sentinel: a worker may answer, then exit
                try:
                    message = pickle.loads(slot.conn.recv_bytes())
                except (EOFError, OSError):  # pipe closed: the worker is dying, let it finish
                    message, dead = None, True
                    slot.process.join(1.0)
                except Exception as e:  # a reply the parent cannot unpickle: the item's problem, not the pool's
                    message = None
                    if slot.item is not None:
                        message = (slot.item, error_score(f"worker reply unreadable: {describe_exception(e)}"), False)
                if message is not None:
                    done += self._handle(i, message, results)
                    if self._slots[i] is not slot:
                        continue  # replaced on purpose (MemoryError): nothing more to learn from it
            now = time.monotonic()
            if dead:
                done += self._handle_death(i, results)
            elif slot.item is not None and now >= slot.deadline:
                results[slot.item] = error_score(f"{TIMEOUT_ERROR} {self.timeout_s} s")
                done += 1
                self._replace(i)
            elif not slot.ready and now >= slot.started + self.start_timeout_s:
                self._replace(i)
                raise RuntimeError(f"a {self.task_name} verifier worker did not start within "
                                   f"{self.start_timeout_s} s; the machine may be overloaded")
        return done

    def _handle(self, i: int, message: tuple[Any, ...], results: list[Score | None]) -> int:
        slot = self._slots[i]
        if message[0] == "ready":
            slot.ready = True
            return 0
        if message[0] == "load_error":
            self.close()
            raise RuntimeError(f"verifier worker could not load task {self.task_name}: {message[1]}")
        index, score, keep_going = message
        if index is None:  # the worker could not unpickle the item, so it could not name it
            index = slot.item
        if index != slot.item:  # cannot happen with one item in flight; never misfile a score
            raise RuntimeError(f"verifier worker answered item {index} while scoring {slot.item}")
        results[index] = score
        slot.item = None
        if not keep_going:
            self._replace(i)
        return 1

    def _handle_death(self, i: int, results: list[Score | None]) -> int:
        slot = self._slots[i]
        slot.process.join(1.0)  # its sentinel fires as it exits; the exit code comes a moment later
        code = slot.process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        done = 0
        if slot.item is not None:
            results[slot.item] = error_score(f"verifier crashed: {how}")
            done = 1
        elif not slot.ready:
            self.close()
            raise RuntimeError(
                f"a {self.task_name} verifier worker died while starting ({how}); see its traceback above. "
                "Workers are spawned: they re-import the main script, which must guard its entry point "
                "with `if __name__ == '__main__':`")
        self._replace(i)
        return done


def _check_lengths(problems: list[Problem], completions: list[str]) -> None:
    if len(problems) != len(completions):
        raise ValueError(f"got {len(problems)} problems but {len(completions)} completions")
