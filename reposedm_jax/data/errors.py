"""Errors for malformed input, and the skip counter used when `data.on_bad_example='skip'`."""

import collections
import logging


class BadExampleError(ValueError):
  """A malformed input, located by file, line and field so the user can fix it."""

  def __init__(self, file: str, message: str, *, line: int | None = None, field: str | None = None):
    self.file, self.line, self.field, self.reason = file, line, field, message
    where = file if line is None else f'{file}:{line}'
    what = f' field {field!r}:' if field else ''
    super().__init__(f'{where}:{what} {message}')


class SkipCounter:
  """Counts skipped examples by reason; logs the first few of each reason in full."""

  def __init__(self, what: str, log_first: int = 5):
    self.what = what
    self.log_first = log_first
    self.counts: collections.Counter[str] = collections.Counter()

  def skip(self, err: BadExampleError) -> None:
    reason = err.reason.split(':')[0]
    self.counts[reason] += 1
    if self.counts[reason] <= self.log_first:
      logging.warning('Skipping %s: %s', self.what, err)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    if not self.total:
      return f'{self.what}: no examples skipped'
    parts = ', '.join(f'{n} x {r}' for r, n in self.counts.most_common())
    return f'{self.what}: skipped {self.total} ({parts})'


# config.data.on_bad_example: stop at a malformed example, or count, log and skip it.
ON_BAD_EXAMPLE = ('error', 'skip')


def handle(err: BadExampleError, on_bad: str, counter: SkipCounter) -> None:
  """Raises `err` in 'error' mode, counts and logs it in 'skip' mode."""
  if on_bad == 'error':
    raise err
  if on_bad != 'skip':
    raise ValueError(f'data.on_bad_example must be one of {ON_BAD_EXAMPLE}, got {on_bad!r}')
  counter.skip(err)
