"""Print a run's K-Means results as a markdown table (the README's results section is pasted from it).

    python tools/results_md.py runs/real/results
"""
import sys
from pathlib import Path

import pandas as pd

s = pd.read_csv(Path(sys.argv[1])/'summary.csv')
s = s[s['clusterer'].isin(['kmeans', 'mixture (own prior)'])]
pm = lambda m: s[f'{m}_mean'].map('{:.3f}'.format) + ' ± ' + s[f'{m}_std'].fillna(0).map('{:.3f}'.format)
cols = {'task': s['task'], 'representation': s['representation'] + s['clusterer'].map(lambda c: '' if c == 'kmeans' else f' ({c})'),
        'ACC': pm('acc'), 'NMI': pm('nmi'), 'ARI': pm('ari'), 'probe macro-F1': pm('probe_f1')}
t = pd.DataFrame(cols)
print('| ' + ' | '.join(t.columns) + ' |\n|' + '---|' * len(t.columns))
for row in t.itertuples(index=False): print('| ' + ' | '.join(map(str, row)) + ' |')
