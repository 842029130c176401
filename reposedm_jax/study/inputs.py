"""What a study is built from: the pairs, and where each pair's real and generated images are.

Pairs files are read exactly as `python -m reposedm_jax.evaluation` reads them (this project's sample manifest
`manifest_p*.jsonl`, a PATN/GFLA `from,to` CSV, or a PIDM `target,source[,...]` txt such as test_pairs.txt),
and a generated image is looked up by the same names (`<src>_2_<tgt>_vis.png` and its variants), so any folder
that evaluates also makes a study.
"""

import dataclasses
import logging
import os

from reposedm_jax.data.errors import BadExampleError
from reposedm_jax.evaluation import files as eval_files


@dataclasses.dataclass(frozen=True)
class StudyInputs:
  """Where the images come from.

  Attributes:
    real: folder of real (ground-truth) images; the targets of the pairs are looked up here.
    generated: method name -> folder of its generated images, in the order given (the first is "ours").
    pairs: pairs file (see the module docstring).
    source: folder of the source images (default: `real`).
    keypoints: PATN annotation CSV or a PIDM root with pose/ (renders the target pose), or ''.
    keypoint_frame: (H, W) pixel frame of a keypoint CSV.
    pose_from_target: show the real target image as the "target pose" (when there are no keypoints).
    skip_missing: drop pairs lacking an image instead of stopping at the first.
  """
  real: str
  generated: dict[str, str]
  pairs: str
  source: str = ''
  keypoints: str = ''
  keypoint_frame: tuple[int, int] = (256, 176)
  pose_from_target: bool = False
  skip_missing: bool = False


@dataclasses.dataclass(frozen=True)
class PairImages:
  """One usable pair: its keys as written in the pairs file and the files found for them."""
  source: str
  target: str
  source_path: str
  target_path: str
  generated: dict[str, str]  # method -> file


def parse_methods(specs: list[str]) -> dict[str, str]:
  """['ours=runs/a/samples', 'PIDM=pidm_out'] -> {'ours': ..., 'PIDM': ...}, order kept."""
  methods = {}
  for spec in specs:
    name, eq, folder = spec.partition('=')
    name = name.strip()
    if not eq or not name or not folder:
      raise ValueError(f'--generated {spec!r}: expected NAME=DIR')
    if name in methods:
      raise ValueError(f'--generated {spec!r}: method name {name!r} given twice')
    methods[name] = folder
  if not methods:
    raise ValueError('--generated: give at least one NAME=DIR')
  return methods


def check_folder(flag: str, path: str) -> None:
  if not os.path.isdir(path):
    raise BadExampleError(path, f'{flag} folder not found')


def check_inputs(inputs: StudyInputs) -> None:
  """Fails on the first missing folder or file, naming it."""
  check_folder('--real', inputs.real)
  if inputs.source:
    check_folder('--source', inputs.source)
  for name, folder in inputs.generated.items():
    check_folder(f'--generated {name}=', folder)
  if not os.path.isfile(inputs.pairs):
    raise BadExampleError(inputs.pairs, '--pairs file not found')
  if inputs.keypoints and not os.path.exists(inputs.keypoints):
    raise BadExampleError(inputs.keypoints, '--keypoints not found (an annotation CSV or a folder with pose/)')


def _missing(inputs: StudyInputs, src: str, tgt: str, what: str, folder: str, tried: list[str]) -> BadExampleError:
  more = f' (tried {", ".join(tried[:3])}{", ..." if len(tried) > 3 else ""})' if tried else ''
  return BadExampleError(inputs.pairs, f'pair {src!r} -> {tgt!r}: {what} not found in {folder}{more}',
                         field='image')


def resolve_pairs(inputs: StudyInputs, kpts_fn=None) -> list[PairImages]:
  """Every pair of the pairs file with all its images (and target keypoints, given `kpts_fn`), in file order.

  Raises:
    BadExampleError: naming the pairs file, the pair and the folder of the first image that is missing, or the
      keypoint file lacking a target (unless `skip_missing`, which logs how many pairs were dropped instead).
  """
  check_inputs(inputs)
  src_root = inputs.source or inputs.real
  out, dropped, seen = [], [], set()
  for src, tgt, name in eval_files.read_pairs(inputs.pairs):
    if (src, tgt) in seen:
      continue  # A pair listed twice is one pair: it must not be shown twice.
    seen.add((src, tgt))
    try:
      tgt_path = eval_files.find_image(inputs.real, tgt)
      if tgt_path is None:
        raise _missing(inputs, src, tgt, 'target image', f'--real {inputs.real}', [])
      src_path = eval_files.find_image(src_root, src)
      if src_path is None:
        raise _missing(inputs, src, tgt, 'source image', f'--source {src_root}', [])
      gen = {}
      for method, folder in inputs.generated.items():
        cands = ([name] if name else []) + eval_files.generated_candidates(src, tgt)
        path = next((os.path.join(folder, c) for c in cands if os.path.isfile(os.path.join(folder, c))), None)
        if path is None:
          raise _missing(inputs, src, tgt, f'generated image of {method!r}', f'--generated {method}={folder}',
                         cands)
        gen[method] = path
      if kpts_fn is not None:
        kpts_fn(tgt, inputs.keypoint_frame)  # Any size will do: this only checks the keypoints are there.
    except BadExampleError as e:
      if not inputs.skip_missing:
        raise
      dropped.append(e)
      continue
    out.append(PairImages(src, tgt, src_path, tgt_path, gen))
  if dropped:
    logging.warning('%d pairs dropped (--skip-missing), e.g. %s', len(dropped), dropped[0])
  if not out:
    raise BadExampleError(inputs.pairs, 'no pair has all its images')
  return out


def keypoint_reader(inputs: StudyInputs):
  """fn(target key, (H, W)) -> float32 [18, 2] keypoints at that size, or None without --keypoints."""
  return eval_files.load_keypoints(inputs.keypoints, inputs.keypoint_frame) if inputs.keypoints else None
