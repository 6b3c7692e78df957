"""Timing a whole forward pass and the attention calls inside it, on a GPU (CUDA events) or a CPU.

Whole model: the median over ``reps`` forwards after a warm-up, each bracketed by events (the GPU) or
``time.perf_counter`` after a synchronisation. Attention: ``TimedAttention`` wraps a
transformers attention function and records an event pair around every call; the attention time
of a forward is the sum of its calls' times, read after one synchronisation at the end (events do
not stall the GPU). Medians, not means: a stray slow run (a clock change, another process) moves a
mean, not a median.
"""

from __future__ import annotations

import statistics
import time

import torch


class Clock:
    """Marks on ``device``'s timeline: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (call ``sync`` first on the GPU)."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class TimedAttention:
    """A transformers attention function that records the time of each call of ``function``.

    Registered under its own name (with the mask builder of the function it wraps: ``sdpa_mask`` for
    "sdpa", ``sdpa_key_mask`` for sage), so the same model runs it; it passes every argument through
    unchanged and returns what ``function`` returns.
    """

    def __init__(self, function, clock: Clock):
        self.function, self.clock, self.marks = function, clock, []

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        start = self.clock.mark()
        out = self.function(module, query, key, value, attention_mask, **kwargs)
        self.marks.append((start, self.clock.mark()))
        return out

    def median_ms(self, run, *, reps: int, warmup: int = 1) -> float:
        """The median over ``reps`` runs of ``run()`` (after ``warmup``) of the time its calls took, in ms."""
        for _ in range(warmup):
            run()
        totals = []
        for _ in range(reps):
            self.marks = []
            run()
            self.clock.sync()
            totals.append(sum(self.clock.ms(start, end) for start, end in self.marks))
        return statistics.median(totals)


def median_ms(run, clock: Clock, *, reps: int, warmup: int = 1) -> float:
    """The median time of ``run()`` over ``reps`` runs after ``warmup`` untimed ones, in ms."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        clock.sync()
        start = clock.mark()
        run()
        end = clock.mark()
        clock.sync()
        times.append(clock.ms(start, end))
    return statistics.median(times)
