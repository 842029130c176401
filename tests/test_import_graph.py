"""The package's import graph (tools/import_graph.py): no circle, no upward arrow, no hidden local import."""

from tools import import_graph


def test_no_import_circle():
  assert import_graph.circles(import_graph.graph()) == []


def test_no_upward_arrow_between_layers():
  assert import_graph.upward(import_graph.graph()) == []


def test_no_function_local_package_import_outside_main_dispatch():
  assert import_graph.local_imports(import_graph.graph()) == []


def test_every_module_has_a_layer_and_the_tool_sees_imports():
  g = import_graph.graph()
  for module in g:
    import_graph.layer(module)  # KeyError names a module missing from LAYERS
  assert 'reposedm_jax.train_state' in {t for t, _, _ in g['reposedm_jax.train']}
  local = {t for t, _, is_local in g['reposedm_jax.main'] if is_local}
  assert {'reposedm_jax.train', 'reposedm_jax.sample', 'reposedm_jax.pose_train'} <= local
