"""The trial plan: which pair serves which trial, seeded and balanced (no files are read here).

Two blocks, as in paper §4.2:
  'rg'  real vs generated: one image a trial, either a real target (`real` trials) or one method's generated
        image (`generated` trials for each method of `rg_methods`); the participant answers real or generated.
  'cmp' comparison: `sets` trials, each the source image, the target pose and one image of every method; the
        participant picks the best.
Each block starts with `practice` unscored trials and hides `catch` attention checks among its trials: in 'rg'
a tile-scrambled real image (correct answer: generated), in 'cmp' a set whose candidates are the intact real
target and tile-scrambled generated images (correct answer: the intact one).

Every trial uses its own pair, and no image (source or target) of one pair is used by another, so no image is
ever shown twice and a generated image never sits in the study next to its own ground truth.
"""

import dataclasses
import random

PLAN_FORMAT = 'reposedm-study-plan'  # trials.json's "format".


@dataclasses.dataclass(frozen=True)
class Design:
  """How many trials of each kind (paper: 30 real, 20 generated, 30 sets).

  Attributes:
    real: real-image trials of block 'rg'.
    generated: generated-image trials of block 'rg' per method of `rg_methods`.
    sets: comparison trials of block 'cmp' (needs two methods or more; 0 = no comparison block).
    catch: attention-check trials per block.
    practice: unscored practice trials per block, before its scored ones.
    rg_methods: the methods whose images block 'rg' shows; () = the first method only, as in the paper (its
      20 generated images among 30 real ones; more methods change the real/generated mix participants see).
    seed: the plan's seed; the same inputs and seed give the same plan.
  """
  real: int = 30
  generated: int = 20
  sets: int = 30
  catch: int = 2
  practice: int = 2
  rg_methods: tuple[str, ...] = ()
  seed: int = 0


class Rng:
  """Seeded choices built only on `random.Random.random()`, whose stream Python guarantees across versions
  (shuffle and sample may change between releases, and a plan must not change with the interpreter)."""

  def __init__(self, seed: int):
    self._r = random.Random(seed)

  def below(self, n: int) -> int:
    return int(self._r.random() * n)

  def shuffled(self, items) -> list:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
      j = self.below(i + 1)
      out[i], out[j] = out[j], out[i]
    return out


def select_pairs(pairs: list[tuple[str, str]], n: int, rng: Rng) -> list[int]:
  """Indices of up to `n` pairs, in random order, no two of which share an image (source or target)."""
  used, out = set(), []
  for i in rng.shuffled(range(len(pairs))):
    src, tgt = pairs[i]
    if src in used or tgt in used or src == tgt:
      continue
    used.update((src, tgt))
    out.append(i)
    if len(out) == n:
      break
  return out


def rg_methods(design: Design, methods: list[str]) -> list[str]:
  chosen = list(design.rg_methods) or list(methods[:1])
  unknown = [m for m in chosen if m not in methods]
  if unknown:
    raise ValueError(f'--rg-methods {",".join(unknown)}: not among the --generated methods {", ".join(methods)}')
  return chosen


def block_sizes(design: Design, methods: list[str]) -> dict[str, int]:
  """Scored (non-practice, non-catch) trials per block."""
  return {'rg': design.real + design.generated * len(rg_methods(design, methods)), 'cmp': design.sets}


def pairs_needed(design: Design, methods: list[str]) -> int:
  sizes = block_sizes(design, methods)
  return sum(n + design.catch + design.practice for n in sizes.values() if n)


def _check(design: Design, methods: list[str]) -> None:
  for field in ('real', 'generated', 'sets', 'catch', 'practice'):
    if getattr(design, field) < 0:
      raise ValueError(f'{field} must be >= 0, got {getattr(design, field)}')
  if design.sets and len(methods) < 2:
    raise ValueError('the comparison block needs two --generated methods or more (or --sets 0)')
  if not any(block_sizes(design, methods).values()):
    raise ValueError('the study has no scored trials: every count is 0')


def _rg_slots(design: Design, methods: list[str]) -> tuple[list, list, list]:
  """(practice, scored, catch) slots of block 'rg' before pairs are assigned."""
  ms = rg_methods(design, methods)
  # Practice alternates real and generated (the methods in turn) so both answers are tried once.
  practice = [('real', None) if i % 2 == 0 or not ms else ('generated', ms[(i // 2) % len(ms)])
              for i in range(design.practice)]
  scored = [('real', None)] * design.real + [('generated', m) for m in ms for _ in range(design.generated)]
  return practice, scored, [('scrambled', None)] * design.catch


def make_plan(pairs: list[tuple[str, str]], methods: list[str], design: Design, *,
              pairs_file: str = 'pairs') -> list[dict]:
  """The study's trials in plan order (practice first in each block, the rest shuffled).

  Args:
    pairs: (source key, target key) of every usable pair.
    methods: method names, in the order given by the user.
    design: trial counts and seed.
    pairs_file: named in the error when there are too few pairs.

  Returns:
    One dict per trial: 'id' ('t001', ... in plan order), 'block', 'practice', 'catch', 'pair' (index into
    `pairs`), and for 'rg' 'show' ('real', 'generated' or 'scrambled') with 'method' (None unless generated),
    for 'cmp' 'candidates': a shuffled list of (method or None, 'generated', 'real' or 'scrambled').

  Raises:
    ValueError: bad counts, or fewer pairs with distinct images than the design needs.
  """
  _check(design, methods)
  rng = Rng(design.seed)
  need = pairs_needed(design, methods)
  chosen = select_pairs(pairs, need, rng)
  if len(chosen) < need:
    raise ValueError(f'{pairs_file}: the design needs {need} pairs that share no image, but only {len(chosen)} '
                     f'of its {len(pairs)} usable pairs do (lower --real-count, --generated-count, --sets, '
                     '--catch or --practice)')
  it = iter(chosen)
  trials = []
  sizes = block_sizes(design, methods)
  if sizes['rg']:
    practice, scored, catch = _rg_slots(design, methods)
    block = [dict(block='rg', practice=True, catch=False, pair=next(it), show=s, method=m) for s, m in practice]
    rest = [dict(block='rg', practice=False, catch=False, pair=next(it), show=s, method=m) for s, m in scored]
    rest += [dict(block='rg', practice=False, catch=True, pair=next(it), show=s, method=m) for s, m in catch]
    trials += block + rng.shuffled(rest)
  if sizes['cmp']:
    def cmp(practice: bool, catch: bool) -> dict:
      if catch:  # The intact real target among scrambles of all methods but one (as many candidates as usual).
        left_out = rng.below(len(methods))
        cands = [(None, 'real')] + [(m, 'scrambled') for i, m in enumerate(methods) if i != left_out]
      else:
        cands = [(m, 'generated') for m in methods]
      return dict(block='cmp', practice=practice, catch=catch, pair=next(it), candidates=rng.shuffled(cands))
    block = [cmp(True, False) for _ in range(design.practice)]
    rest = [cmp(False, False) for _ in range(design.sets)] + [cmp(False, True) for _ in range(design.catch)]
    trials += block + rng.shuffled(rest)
  width = len(str(len(trials)))
  for i, t in enumerate(trials):
    t['id'] = f't{i + 1:0{max(width, 3)}d}'
  return trials
