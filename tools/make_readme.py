"""Write README.md from the markdown cells of nbs/index.ipynb (nbdev_readme needs Quarto)."""
import json
from pathlib import Path

top = Path(__file__).resolve().parent.parent
nb = json.loads((top/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
parts = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
text = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit that notebook -->\n\n' + '\n\n'.join(parts) + '\n'
(top/'README.md').write_text(text, encoding='utf-8')
