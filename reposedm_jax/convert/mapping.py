"""The strict key matching the converters share: a state dict against the Flax tree's expected shapes."""

from typing import Callable, Iterable, Mapping

import numpy as np


def match_keys(items: Iterable[tuple[str, np.ndarray]], expected: Mapping[tuple, tuple],
               target: Callable[[str, int], tuple], layout_shape: Callable[[tuple], tuple], what: str) -> dict:
  """{Flax path: source key} for every expected path; one ValueError listing every missing, unexpected and
  mis-shaped tensor otherwise (`what` starts the message). `target(key, ndim)` is a key's Flax path and
  `layout_shape(shape)` its shape after the converter's re-layout."""
  plan, seen, unexpected, misshaped = {}, set(), [], []
  for key, value in items:
    path = target(key, np.ndim(value))
    if path not in expected:
      unexpected.append(f'{key} {tuple(np.shape(value))}')
      continue
    seen.add(path)
    shape = tuple(layout_shape(tuple(np.shape(value))))
    if shape != tuple(expected[path]):
      misshaped.append(f'{key}: {tuple(np.shape(value))} -> {shape}, model expects {expected[path]}')
      continue
    plan[path] = key
  missing = ['/'.join(p) + f' {expected[p]}' for p in expected if p not in seen]
  if missing or unexpected or misshaped:
    why = [f'{len(missing)} missing {missing[:8]}'] * bool(missing) + \
        [f'{len(unexpected)} unexpected {unexpected[:8]}'] * bool(unexpected) + \
        [f'{len(misshaped)} mis-shaped {misshaped[:8]}'] * bool(misshaped)
    raise ValueError(f'{what}: ' + '; '.join(why))
  return plan


def nest(plan: Mapping[tuple, str], values: Mapping[str, np.ndarray], transform: Callable) -> dict:
  """The nested tree {path: transform(values[key])} of a `match_keys` plan."""
  tree = {}
  for path, key in plan.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = transform(values[key])
  return tree
