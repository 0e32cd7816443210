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
