"""The package's import graph: circles, upward arrows between layers, function-local imports.

  python tools/import_graph.py [--edges]

Reads every module of reposedm_jax/ with `ast` (nothing is imported). An arrow A -> B means that A
imports B (any of `import reposedm_jax.B`, `from reposedm_jax import B`, `from reposedm_jax.B import x`,
relative forms; `if TYPE_CHECKING:` blocks do not count). Layers go from leaves (0) to entry points (4); an arrow from a lower to a higher layer
is "upward". Exit status 1 when there is a circle, an upward arrow or a function-local package import
that is not allowed (tests/test_import_graph.py asserts the same).
"""

import argparse
import ast
import os
import sys
from typing import Dict, List, Tuple

PACKAGE = 'reposedm_jax'
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

# Layer of each module, by longest matching prefix (a package name covers its modules; the package root
# itself matches only exactly). Lower layers never import higher ones.
LAYERS = {
    # 0: leaf utilities (no package imports but each other).
    'reposedm_jax': 0, 'reposedm_jax.logs': 0, 'reposedm_jax.sharding': 0,
    'reposedm_jax.convert.torch_checkpoint': 0, 'reposedm_jax.convert.torch_legacy': 0,
    # 1: building blocks: networks, diffusion maths, data, metrics, the losses/guidance built on them.
    'reposedm_jax.models': 1, 'reposedm_jax.diffusion': 1, 'reposedm_jax.data': 1, 'reposedm_jax.metrics': 1,
    'reposedm_jax.pif': 1, 'reposedm_jax.rpa_training': 1,
    'reposedm_jax.reid': 1,  # ResNet-50, Market-1501's protocol and folders; its jobs below
    'reposedm_jax.sd': 1,  # RePoseSD's networks (SD 2.x U-Net, text tower), data, metrics, grouping
    # 2: weights in and out, train states, the frozen pose estimator, the sampler.
    'reposedm_jax.convert': 2, 'reposedm_jax.checkpoint': 2, 'reposedm_jax.train_state': 2,
    'reposedm_jax.pose_estimator': 2, 'reposedm_jax.sample': 2,
    'reposedm_jax.latent': 2,  # latent mode's frozen VAE between the data and the model (loads weights)
    'reposedm_jax.visualize': 2,  # grids draw poses with data.pose
    'reposedm_jax.sd.model': 2, 'reposedm_jax.sd.loop': 2,  # RePoseSD's parts (loads weights), its train loop
    # 3: the jobs, and the validator of their configs (it reads each job's vocabulary).
    'reposedm_jax.train': 3, 'reposedm_jax.pose_train': 3, 'reposedm_jax.evaluation': 3,
    'reposedm_jax.config_lib': 3,
    'reposedm_jax.reid.train': 3,  # mode=reid_train / reid_eval
    'reposedm_jax.sd.train': 3, 'reposedm_jax.sd.detector_train': 3, 'reposedm_jax.sd.vae_train': 3,  # sd_* modes
    'reposedm_jax.run_weights': 3,  # a run's config and weights in, an export out (predict's and export's)
    # 4: entry points and tools built on the jobs.
    'reposedm_jax.main': 4, 'reposedm_jax.study': 4, 'reposedm_jax.ablation': 4,
    'reposedm_jax.predict': 4, 'reposedm_jax.export': 4, 'reposedm_jax.app': 4,
    'reposedm_jax.sd.report': 4,  # make reposesd-tiny's table and grid
    'reposedm_jax.reid.augment': 4,  # mode=reid_augment: generates with predict's loader, trains with reid.train
}
# Function-local imports of the package's own modules that are allowed: main.py's mode dispatch (each
# mode pays only for its own imports).
ALLOWED_LOCAL = {'reposedm_jax.main'}


def module_names(root: str = ROOT) -> Dict[str, str]:
  """Dotted module name -> file path, for every .py under the package."""
  out = {}
  base = os.path.dirname(root)
  for dirpath, _, files in os.walk(root):
    for f in sorted(files):
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(dirpath, f)
  return out


def layer(module: str) -> int:
  parts = module.split('.')
  for n in range(len(parts), 1, -1):
    if '.'.join(parts[:n]) in LAYERS:
      return LAYERS['.'.join(parts[:n])]
  if module in LAYERS:
    return LAYERS[module]
  raise KeyError(f'{module} has no layer in tools/import_graph.py LAYERS')


def _resolve(name: str, modules) -> str:
  """The module a dotted name refers to (a package's attribute import resolves to the package)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name


def imports(module: str, path: str, modules) -> List[Tuple[str, int, bool]]:
  """(imported package module, line, inside a function) for every import of the package in `path`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_pkg = path.endswith('__init__.py')
  here = module if is_pkg else module.rpartition('.')[0]
  out = []

  def visit(node, in_function: bool):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.If) and 'TYPE_CHECKING' in ast.unparse(child.test):
        continue  # annotations only: nothing is imported at run time
      local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      targets = []
      if isinstance(child, ast.Import):
        targets = [a.name for a in child.names]
      elif isinstance(child, ast.ImportFrom):
        if child.level:
          pkg = here.split('.')
          pkg = pkg[:len(pkg) - child.level + 1]
          base = '.'.join(pkg + ([child.module] if child.module else []))
        else:
          base = child.module or ''
        targets = [f'{base}.{a.name}' for a in child.names]
      for t in targets:
        if t == PACKAGE or t.startswith(PACKAGE + '.'):
          target = _resolve(t, modules)
          if target and target != module:
            out.append((target, child.lineno, in_function))
      visit(child, local)

  visit(tree, False)
  return out


def graph(root: str = ROOT):
  """{module: [(target, line, local)]} over the package."""
  modules = module_names(root)
  return {m: imports(m, p, modules) for m, p in sorted(modules.items())}


def circles(g) -> List[List[str]]:
  """Strongly connected components with more than one module (Tarjan), each sorted."""
  edges = {m: sorted({t for t, _, _ in deps}) for m, deps in g.items()}
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, []):
      if w not in index:
        strong(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(10000)
  for v in edges:
    if v not in index:
      strong(v)
  return sorted(out)


def upward(g) -> List[str]:
  return [f'{m} (layer {layer(m)}) -> {t} (layer {layer(t)}), line {line}'
          for m, deps in g.items() for t, line, _ in deps if layer(t) > layer(m)]


def local_imports(g) -> List[str]:
  return [f'{m}:{line} imports {t} inside a function'
          for m, deps in g.items() if m not in ALLOWED_LOCAL for t, line, local in deps if local]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--edges', action='store_true', help='print every arrow')
  args = p.parse_args(argv)
  g = graph()
  if args.edges:
    for m, deps in g.items():
      targets = sorted({t for t, _, _ in deps})
      print(f'{m} [{layer(m)}] -> ' + (', '.join(targets) if targets else '-'))
  problems = 0
  for title, rows in (('circles', [' <-> '.join(c) for c in circles(g)]), ('upward arrows', upward(g)),
                      ('function-local package imports', local_imports(g))):
    print(f'{title}: {len(rows)}')
    for r in rows:
      print('  ' + r)
    problems += len(rows)
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
