"""House rules of the notebooks that the docs build depends on."""
import ast, json
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parent.parent/'nbs').glob('*.ipynb'))
EXPORTS = ('#| export', '#| exporti', '#|export', '#|exporti')


def _code_cells(nb_path):
    for i, c in enumerate(json.loads(nb_path.read_text())['cells']):
        if c['cell_type'] == 'code': yield i, ''.join(c['source'])


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_imports_in_cells_of_their_own(nb):
    "nbdev's docs processing executes every cell with an import anywhere in it: such a cell may only import and define."
    harmless = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    bad = []
    for i, src in _code_cells(nb):
        if any(l.strip().startswith(EXPORTS) for l in src.splitlines()): continue
        tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
        if any(isinstance(t, (ast.Import, ast.ImportFrom)) for t in ast.walk(tree)) and \
           any(not isinstance(t, harmless) for t in tree.body):
            bad.append(f'cell {i}: {src.splitlines()[0][:70]}')
    assert not bad, f'{nb.name}: cells mixing imports with other code:\n' + '\n'.join(bad)


@pytest.mark.parametrize('nb', [p for p in NBS if p.stem != 'index'], ids=lambda p: p.name)
def test_one_parameters_cell(nb):
    cells = json.loads(nb.read_text())['cells']
    assert sum('parameters' in c.get('metadata', {}).get('tags', []) for c in cells) == 1


LAYERS = ('data', 'features', 'core', 'hybrid', 'variants', 'analysis')  # each module may import only from those before it
TOP = Path(__file__).resolve().parent.parent


def _top_level(path):
    return ast.parse(path.read_text()).body


@pytest.mark.parametrize('module', LAYERS)
def test_imports_run_downward(module):
    "data → features → core → hybrid → variants → analysis: no module imports from one after it."
    allowed = set(LAYERS[:LAYERS.index(module)])
    used = set()
    for node in ast.walk(ast.parse((TOP/'mmvae'/f'{module}.py').read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1: used.add((node.module or '').split('.')[0])
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or '').startswith('mmvae.'): used.add(node.module.split('.')[1])
        if isinstance(node, ast.Import): used |= {a.name.split('.')[1] for a in node.names if a.name.startswith('mmvae.')}
    assert used <= allowed, f'mmvae.{module} imports from {sorted(used - allowed)}, which come after it'


@pytest.mark.parametrize('module', LAYERS)
def test_module_imports_at_the_top(module):
    "A module's imports stand before its first definition (function-local imports aside)."
    body = [n for n in _top_level(TOP/'mmvae'/f'{module}.py') if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first_def = next((i for i, n in enumerate(body) if not isinstance(n, (ast.Import, ast.ImportFrom))), len(body))
    late = [n.lineno for n in body[first_def:] if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not late, f'mmvae.{module}: imports after the first definition, at lines {late}'


@pytest.mark.parametrize('nb', [p for p in NBS if p.stem[:2].isdigit()], ids=lambda p: p.name)
def test_notebooks_import_downward(nb):
    "A notebook uses its own module and those before it: no task notebook imports from mmvae.analysis."
    allowed = set(LAYERS[:int(nb.stem[:2]) + 1])
    used = set()
    for _, src in _code_cells(nb):
        tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('mmvae.'): used.add(node.module.split('.')[1])
    assert used <= allowed, f'{nb.name} imports from mmvae.{sorted(used - allowed)}'
