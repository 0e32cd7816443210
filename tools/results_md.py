"""Print a run's K-Means results as a markdown table (the README's results section is pasted from it).

    python tools/results_md.py runs/real/results
"""
import sys
from pathlib import Path

import pandas as pd

from mmvae.core import format_pm

SHOWN = ('kmeans', 'mixture (own prior)')  # K-Means, and VaDE's own mixture
COLUMNS = {'acc': 'ACC', 'nmi': 'NMI', 'ari': 'ARI', 'probe_f1': 'probe macro-F1'}


def results_md(results) -> str:
    "The markdown table of the study summary (`summary.csv`) under the results root `results`."
    s = pd.read_csv(Path(results)/'summary.csv')
    s = s[s['clusterer'].isin(SHOWN)].reset_index(drop=True)
    s['representation'] = s['name'] + s['clusterer'].map(lambda c: '' if c == 'kmeans' else f' ({c})')
    t = format_pm(s, list(COLUMNS), index=('task', 'representation')).rename(columns=COLUMNS).reset_index()
    return '\n'.join(['| ' + ' | '.join(t.columns) + ' |', '|' + '---|' * len(t.columns),
                      *('| ' + ' | '.join(map(str, row)) + ' |' for row in t.itertuples(index=False))])


if __name__ == '__main__':
    print(results_md(sys.argv[1]))
