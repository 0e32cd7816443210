#!/usr/bin/env python
"""Convert the MSD_musicnn checkpoint of the musicnn 0.1.0 wheel into `mmvae/weights/musicnn_msd.npz` (run once).

musicnn (Pons & Serra 2019, ISC licence) ships its trained weights inside its wheel as TensorFlow 1 checkpoints.
This tool reads the checkpoint with TensorFlow, in a throwaway environment (TensorFlow is never a dependency of mmvae):

    pip download --no-deps musicnn==0.1.0 -d /tmp/tf
    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 "numpy<2"
    /tmp/tfenv/bin/python tools/convert_musicnn.py /tmp/tf/musicnn-0.1.0-py3-none-any.whl

It writes, beside each other in `mmvae/weights/` (shipped as package data):
  - `musicnn_msd.npz`: every trained variable of the checkpoint under its TensorFlow name and in its TensorFlow layout
    (the optimiser's Adam slots and step counters left out), plus `tags`, the 50 MSD tag names of the wheel's
    `configuration.MSD_LABELS`; plain arrays, read with `np.load(..., allow_pickle=False)`;
  - `musicnn_msd.json`: provenance: the wheel, its sha256, the sha256 of each checkpoint file and of the npz;
  - `LICENSE-musicnn.md`: the wheel's ISC licence notice, which must accompany the weights.
`mmvae.musicnn.load_musicnn` maps the variables onto the torch model.
"""
import argparse, ast, hashlib, io, json, sys, tempfile, zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent/'mmvae'/'weights'
MODEL = 'MSD_musicnn'
SLOTS = ('/Adam', '/Adam_1')  # optimiser state, not weights
COUNTERS = ('beta1_power', 'beta2_power')


def sha256(data: bytes) -> str: return hashlib.sha256(data).hexdigest()


def labels(wheel: zipfile.ZipFile, name: str = 'MSD_LABELS') -> list[str]:
    "A tag list of the wheel's `musicnn/configuration.py`, read without importing it."
    tree = ast.parse(wheel.read('musicnn/configuration.py'))
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name: return ast.literal_eval(node.value)
    raise KeyError(f'{name} not in musicnn/configuration.py')


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    "The trained variables of a TF1 checkpoint, by name (TensorFlow needed here only)."
    import tensorflow as tf
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    names = [n for n in reader.get_variable_to_shape_map() if not n.endswith(SLOTS) and n not in COUNTERS]
    return {n: reader.get_tensor(n).astype(np.float32) for n in sorted(names)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('wheel', help='musicnn-0.1.0-py3-none-any.whl (from `pip download --no-deps musicnn==0.1.0`)')
    ap.add_argument('--out', default=str(OUT), help='folder to write to (default: mmvae/weights)')
    args = ap.parse_args(argv)
    wheel_bytes = Path(args.wheel).read_bytes()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel, tempfile.TemporaryDirectory() as d:
        files = sorted(n for n in wheel.namelist() if n.startswith(f'musicnn/{MODEL}/'))
        for n in files: (Path(d)/Path(n).name).write_bytes(wheel.read(n))
        variables = read_checkpoint(f'{d}/')  # the checkpoint's prefix is the folder itself ('.index', '.data-...')
        tags = labels(wheel)
        licence = wheel.read('musicnn-0.1.0.dist-info/LICENSE.md').decode()
        version = next(l.split(':', 1)[1].strip() for l in wheel.read('musicnn-0.1.0.dist-info/METADATA').decode().splitlines()
                       if l.startswith('Version:'))
        checkpoint = {n: sha256(wheel.read(n)) for n in files}
    npz = out/'musicnn_msd.npz'
    buf = io.BytesIO(); np.savez_compressed(buf, tags=np.array(tags), **variables)
    npz.write_bytes(buf.getvalue())
    with np.load(npz, allow_pickle=False) as z: assert sorted(z.files) == sorted(['tags', *variables])  # safe to load
    (out/'LICENSE-musicnn.md').write_text(
        'The file musicnn_msd.npz holds the trained weights of the MSD_musicnn model of musicnn 0.1.0 '
        '(https://github.com/jordipons/musicnn, https://pypi.org/project/musicnn/0.1.0/), converted by '
        'tools/convert_musicnn.py. Pons, J. and Serra, X. (2019), "musicnn: pre-trained convolutional neural networks for '
        'music audio tagging", ISMIR late-breaking/demo. They are distributed under the ISC licence of musicnn:\n\n' + licence)
    provenance = dict(source=f'musicnn {version} (PyPI wheel {Path(args.wheel).name})', licence='ISC', model=MODEL,
                      wheel_sha256=sha256(wheel_bytes), checkpoint_sha256=checkpoint,
                      variables={n: list(v.shape) for n, v in variables.items()}, n_tags=len(tags),
                      npz=npz.name, npz_sha256=sha256(npz.read_bytes()), tool='tools/convert_musicnn.py')
    (out/'musicnn_msd.json').write_text(json.dumps(provenance, indent=1) + '\n')
    print(f'{npz}: {len(variables)} variables, {sum(v.size for v in variables.values()):,} weights, '
          f'{npz.stat().st_size / 1e6:.1f} MB, sha256 {provenance["npz_sha256"][:16]}...')


if __name__ == '__main__':
    sys.exit(main())
