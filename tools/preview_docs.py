"""Render executed notebooks as the docs site would show them, without Quarto.

Each notebook goes through nbdev's docs processors (hidden cells, show_doc), then through what
Quarto does with the directives nbdev leaves (`echo`, `output`, `include`, the front matter, link
attributes), and `nbconvert` writes an HTML page with a title and a navigation bar. plotly.js and
MathJax (from the jupyter-server-mathjax package) are written once into the site folder, so the
pages need no network. Quarto builds the real site where it is installed (`nbdev_docs`); this
preview is what can be built and checked anywhere.

    python tools/preview_docs.py runs/demo/notebooks --out _docs_preview
"""
import argparse, os, re, shutil
from html import escape
from pathlib import Path

import yaml

from mmvae.analysis import NOTEBOOKS, notebooks_dir

DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')
ATTRIBUTES = re.compile(r'\{(?:target|style|\.|#)[^{}\n]*\}')  # pandoc attributes after a link or span: Quarto's, not text
FENCE = re.compile(r'^:::.*$\n?', re.M)  # pandoc div fences
PLOTLY_JS = re.compile(r'<script[^>]*>\s*/\*\*\s*\n\* plotly\.js v[\s\S]*?</script>')
CDN_SCRIPTS = re.compile(r'<script src="https://(?:cdnjs\.cloudflare\.com/ajax/libs/(?:mathjax|require\.js)|unpkg\.com/@jupyter-widgets)/'
                         r'[^"]*"></script>')  # bundled, or not needed by a static page
MATHJAX = 'mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe'
MATHJAX_FONTS = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], '
                 'preferredFont: null, webFont: "STIX-Web", imageFont: null}});</script>')  # the fonts the package ships


def process(src: Path, dst: Path) -> str:
    "nbdev's docs processing of one notebook, then Quarto's reading of its directives; returns the page title."
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    nb = read_nb(src)
    os.environ['IN_TEST'] = '1'
    try: FilterDefaults()(nb)
    finally: del os.environ['IN_TEST']
    nb.metadata.pop('widgets', None)  # a static page has no widget manager: widgets show their text form
    title = src.stem
    cells = []
    for c in nb.cells:
        if c.cell_type == 'raw' and c.source.lstrip().startswith('---'):  # the front matter
            meta = yaml.safe_load(c.source.strip().strip('-')) or {}
            title = str(meta.get('title', title))
            c.cell_type, c.source = 'markdown', f"# {title}\n" + (f"\n> {meta['description']}\n" if meta.get('description') else '')
        elif c.cell_type == 'markdown': c.source = _markdown(c.source)
        elif c.cell_type == 'code':
            if 'injected-parameters' in c.get('metadata', {}).get('tags', []): c.source = _no_local_paths(c.source)
            opts, body = _directives(c.source)
            if opts.get('include') == 'false': continue
            c.source = body
            if opts.get('echo') == 'false' or not body.strip(): c.setdefault('metadata', {})['transient'] = {'remove_source': True}
            if opts.get('output') == 'false': c.outputs = []
            elif opts.get('output') == 'asis':  # the printed text is Markdown
                text = ''.join(_text(o) for o in c.get('outputs', []))
                if c.metadata.get('transient', {}).get('remove_source'):  # the cell becomes its Markdown (a Markdown cell with remove_source would show nothing)
                    c.cell_type, c.source = 'markdown', _markdown(text); c.metadata.pop('transient')
                else: cells.append(c); c = dict(cell_type='markdown', source=_markdown(text), metadata={})
                c.pop('outputs', None); c.pop('execution_count', None)
            for o in c.get('outputs', []):
                o.get('data', {}).pop('application/vnd.jupyter.widget-view+json', None)
                if 'text/markdown' in o.get('data', {}): o['data']['text/markdown'] = _markdown(_joined(o['data']['text/markdown']))
        cells.append(c)
    nb.cells = cells
    write_nb(nb, dst)
    return title


def _directives(source: str) -> tuple[dict, str]:
    "The `#| key: value` lines at the top of a code cell, and the rest."
    lines, opts = source.splitlines(), {}
    while lines and (m := DIRECTIVE.match(lines[0])): opts[m[1]] = m[2].lower(); lines.pop(0)
    return opts, '\n'.join(lines)


def _no_local_paths(source: str) -> str:
    "Papermill's injected parameters with each absolute path cut to its last part: the reader's machine is not the runner's."
    return re.sub(r'(["\'])(/[^"\'\n]*/)([^/"\'\n]+)\1', r'\1…/\3\1', source)


def _joined(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)


def _text(output) -> str:
    "What an output shows as text: a stream's text, else its Markdown, else its plain text."
    if output.get('output_type') == 'stream': return output.get('name') == 'stdout' and _joined(output.get('text', '')) or ''
    data = output.get('data', {})
    return _joined(data.get('text/markdown', data.get('text/plain', '')))


def _markdown(text: str) -> str: return FENCE.sub('', ATTRIBUTES.sub('', text))


def to_html(nb_path: Path, out: Path, title: str, nav: str) -> Path:
    "One HTML page from a processed notebook: title, navigation, local MathJax, plotly.js from the site folder."
    import nbformat
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter(template_name='lab', mathjax_url=MATHJAX).from_notebook_node(nbformat.read(nb_path, as_version=4))
    js = out/'plotly.min.js'
    def keep(m):
        if not js.is_file(): js.write_text(re.sub(r'^<script[^>]*>|</script>$', '', m[0]), encoding='utf-8')
        return ''
    body = CDN_SCRIPTS.sub('', PLOTLY_JS.sub(keep, body))
    body = re.sub(r'<title>.*?</title>', f'<title>{escape(title)} – mmvae</title>', body, count=1, flags=re.S)
    body = body.replace('<head>', '<head>\n' + MATHJAX_FONTS, 1)
    body = body.replace('</head>', '<script src="plotly.min.js"></script>\n<style>.mmvae-nav{padding:.6em 1em;border-bottom:1px solid #ddd;'
                        'font-family:sans-serif}.mmvae-nav a{margin-right:1.2em}.mmvae-nav b{margin-right:1.2em}</style>\n</head>', 1)
    body = re.sub(r'(<body[^>]*>)', lambda m: m[1] + nav.replace(f'<a href="{nb_path.stem}.html">', '<a aria-current="page" href="'
                                                                    f'{nb_path.stem}.html">'), body, count=1)
    page = out/(nb_path.stem + '.html')
    page.write_text(body, encoding='utf-8')
    return page


def preview(executed: Path, out: Path) -> list[Path]:
    "Process and render the executed study notebooks found in `executed` (and the unexecuted index); return the pages."
    import jupyter_server_mathjax
    nbs = notebooks_dir()
    os.chdir(nbs.parent)
    out.mkdir(parents=True, exist_ok=True)
    (out/'plotly.min.js').unlink(missing_ok=True)
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent/'static', out/'mathjax', dirs_exist_ok=True)
    work = out/'_proc'
    shutil.rmtree(work, ignore_errors=True); work.mkdir()
    sources = [nbs/'index.ipynb', *(executed/f'{n}.ipynb' for n in NOTEBOOKS if (executed/f'{n}.ipynb').is_file())]
    titles = {src.stem: process(src, work/src.name) for src in sources}
    nav = ('<nav class="mmvae-nav"><a href="index.html"><b>mmvae</b></a>'
           + ''.join(f'<a href="{stem}.html">{escape(t)}</a>' for stem, t in titles.items() if stem != 'index') + '</nav>')
    pages = [to_html(work/f'{stem}.ipynb', out, t, nav) for stem, t in titles.items()]
    shutil.rmtree(work)
    return pages


if __name__ == '__main__':
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('executed', nargs='?', default='runs/demo/notebooks', help='folder of executed notebooks')
    a.add_argument('--out', default='_docs_preview', help='folder for the HTML pages')
    args = a.parse_args()
    for p in preview(Path(args.executed).resolve(), Path(args.out).resolve()): print(p)
