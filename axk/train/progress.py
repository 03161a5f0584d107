"""Progress bars whose speed and ETA leave out compilation.

The first call of a jitted step compiles it (seconds to minutes); counted as a step, it
makes tqdm's rate and ETA wrong for the whole run. `StepBar` says "compiling..." until the
first step is done, then starts its clock there: the rate is the steps after the first one
over the time since it ended, and the ETA follows from it.
"""

from __future__ import annotations

from typing import Callable

from tqdm import tqdm

COMPILING = "compiling..."


class StepBar(tqdm):
  """A tqdm bar (same arguments) whose rate counts from the end of its first update.

  `clock` replaces tqdm's `time.time` (tests). The rate is the plain average since the first
  step (tqdm's `smoothing=0`), so the first step never enters it.
  """

  def __init__(self, *args, desc: str = "", clock: Callable[[], float] | None = None,
               **kwargs):
    kwargs["smoothing"] = 0
    self._label = desc or ""
    self._compiled = False
    super().__init__(*args, desc=f"{self._label} ({COMPILING})".strip(), **kwargs)
    if clock is not None and not self.disable:
      self._time = clock
      self.start_t = self.last_print_t = clock()

  def update(self, n: float = 1) -> bool | None:
    if self._compiled or self.disable:
      return super().update(n)
    self._compiled = True
    # The steps so far (the one that compiled) stop counting: the rate starts here.
    self.initial = self.n + n
    self.start_t = self.last_print_t = self._time()
    self.set_description_str(self._label, refresh=False)
    shown = super().update(n)
    self.refresh()
    return shown

  def __iter__(self):
    """Iterating updates the bar one item at a time (tqdm's own loop bypasses `update`)."""
    iterable = self.iterable
    self.iterable = None
    try:
      for item in iterable:
        yield item
        self.update(1)
    finally:
      self.iterable = iterable
      self.close()
