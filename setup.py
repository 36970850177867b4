import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def version():
    with open(osp.join(HERE, 'mmoverlock', '__init__.py')) as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip("'")


def add_mim_files():
    """Ship configs/ and model-index.yml inside the package (mmoverlock/.mim), as OpenMMLab packages do, so that
    an installed wheel finds its configs (mmpretrain's model hub, mim). Editable installs read the source tree."""
    if not any(cmd in sys.argv for cmd in ('sdist', 'bdist_wheel', 'build', 'install')):
        return
    target = osp.join(HERE, 'mmoverlock', '.mim')
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    shutil.copytree(osp.join(HERE, 'configs'), osp.join(target, 'configs'))
    shutil.copy(osp.join(HERE, 'model-index.yml'), target)


def requirements(name):
    """The requirement lines of ``requirements/NAME.txt`` (comments and blank lines dropped)."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


add_mim_files()
EXTRAS = {name: requirements(name) for name in ('det', 'seg', 'cls', 'gpu', 'deploy', 'timm', 'tests')}
EXTRAS['all'] = sorted(set(EXTRAS['det'] + EXTRAS['seg'] + EXTRAS['cls']))
setup(
    name='mmoverlock',
    version=version(),
    description='OverLoCK (CVPR 2025) backbone for OpenMMLab 2.x: mmdet 3, mmseg 1, mmpretrain 1',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    url='https://github.com/LMMMEng/OverLoCK',
    packages=find_packages(include=['mmoverlock', 'mmoverlock.*']),
    package_data={'mmoverlock': ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/configs/**/*.yml']},
    python_requires='>=3.8',
    # `import mmoverlock` needs torch and mmengine only (requirements/runtime.txt); each task's library comes
    # with its extra, as in OpenMMLab's own packages
    install_requires=requirements('runtime'),
    extras_require=EXTRAS,
    license='Apache-2.0',
)
