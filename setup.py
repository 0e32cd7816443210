"""Install mmvae from `settings.ini` (the nbdev 2 layout)."""
from configparser import ConfigParser
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}
requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=licenses[cfg['license']],
    url=cfg['git_url'],
    keywords=cfg['keywords'].split(),
    classifiers=['Development Status :: 3 - Alpha', f"Intended Audience :: {cfg['audience']}",
                 'Natural Language :: English',
                 'Programming Language :: Python :: 3', 'Topic :: Multimedia :: Sound/Audio :: Analysis'],
    packages=setuptools.find_packages(include=['mmvae', 'mmvae.*']) + ['mmvae.weights'],  # weights: data, no code
    include_package_data=True,
    package_data={'mmvae.weights': ['*.npz', '*.json', '*.md']},  # musicnn's weights, provenance, licence
    python_requires=f">={cfg['min_python']}",
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
