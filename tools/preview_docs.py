"""Render executed notebooks as the docs would show them, without Quarto.

Each notebook goes through nbdev's docs processors (hidden cells, directives, show_doc), then
`nbconvert` writes an HTML page; an index page links them. Quarto builds the real site where it
is installed (`nbdev_docs`); this preview is what can be built and checked anywhere.

    python tools/preview_docs.py runs/demo/notebooks --out _docs_preview
"""
import argparse, os, shutil
from pathlib import Path

from mmvae.analysis import NOTEBOOKS, notebooks_dir


def process(src: Path, dst: Path):
    "nbdev's docs processing of one notebook (run from the project so nbdev finds settings.ini)."
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    nb = read_nb(src)
    os.environ['IN_TEST'] = '1'
    try: FilterDefaults()(nb)
    finally: del os.environ['IN_TEST']
    write_nb(nb, dst)


def to_html(nb_path: Path, out: Path) -> Path:
    "One HTML page, plotly and all, from a processed notebook."
    import nbformat
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter(template_name='lab').from_notebook_node(nbformat.read(nb_path, as_version=4))
    page = out/(nb_path.stem + '.html')
    page.write_text(body, encoding='utf-8')
    return page


def preview(executed: Path, out: Path) -> list[Path]:
    "Process and render the executed study notebooks found in `executed` (and the unexecuted index); return the pages."
    nbs = notebooks_dir()
    os.chdir(nbs.parent)
    out.mkdir(parents=True, exist_ok=True)
    work = out/'_proc'
    shutil.rmtree(work, ignore_errors=True); work.mkdir()
    pages = []
    for src in [nbs/'index.ipynb', *(executed/f'{n}.ipynb' for n in NOTEBOOKS if (executed/f'{n}.ipynb').is_file())]:
        process(src, work/src.name)
        pages.append(to_html(work/src.name, out))
    links = ''.join(f'<li><a href="{p.name}">{p.stem}</a></li>' for p in pages)
    (out/'home.html').write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>mmvae docs preview</title></head>'
                                 f'<body><h1>mmvae docs preview</h1><ul>{links}</ul></body></html>', encoding='utf-8')
    shutil.rmtree(work)
    return pages


if __name__ == '__main__':
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('executed', nargs='?', default='runs/demo/notebooks', help='folder of executed notebooks')
    a.add_argument('--out', default='_docs_preview', help='folder for the HTML pages')
    args = a.parse_args()
    for p in preview(Path(args.executed).resolve(), Path(args.out).resolve()): print(p)
