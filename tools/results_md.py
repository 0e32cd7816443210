"""Print a run's results as markdown (the README's results section is pasted from it): the study table (K-Means, and VaDE's
own mixture) with the chance level beside each metric, then the sentences that follow from the Holm-corrected comparisons
with PCA on the same inputs, and their table in full.

    python tools/results_md.py runs/real/results
"""
import sys
from pathlib import Path

import pandas as pd

from mmvae.core import comparison_sentences, comparisons_table, format_pm, markdown_table

SHOWN = ('kmeans', 'mixture (own prior)')  # K-Means, and VaDE's own mixture
COLUMNS = {'acc': 'ACC', 'nmi': 'NMI', 'ami': 'AMI', 'ari': 'ARI', 'probe_f1': 'probe macro-F1'}
HEADERS = COLUMNS | {f'{m} chance': f'{h} chance' for m, h in COLUMNS.items()}  # chance: null mean (95th percentile)


def results_md(results) -> str:
    "The markdown of the study summary (`summary.csv`) and, where 05 wrote it, of the comparisons (`comparisons.csv`) under `results`."
    s = pd.read_csv(Path(results)/'summary.csv')
    s = s[s['clusterer'].isin(SHOWN)].reset_index(drop=True)
    s['representation'] = s['name'] + s['clusterer'].map(lambda c: '' if c == 'kmeans' else f' ({c})')
    t = format_pm(s, [m for m in COLUMNS if f'{m}_mean' in s], index=('task', 'representation'), chance=True).rename(columns=HEADERS)
    parts = [markdown_table(t.reset_index())]
    if (path := Path(results)/'comparisons.csv').is_file():
        c = pd.read_csv(path, dtype={'representation': str, 'baseline': str})
        parts += ['', *comparison_sentences(c)] + (['', markdown_table(comparisons_table(c))] if len(c) else [])
    return '\n'.join(parts)


if __name__ == '__main__':
    print(results_md(sys.argv[1]))
