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


add_mim_files()
# The versions that work together: mmdet 3.3 / mmseg 1.2 refuse mmcv >= 2.2; mmengine 0.10.x.
DET = ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0.0,<3.4']
SEG = ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.0.0,<1.3']
CLS = ['mmpretrain>=1.0.0,<1.3']
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
    # `import mmoverlock` needs torch and mmengine only; each task's library comes with its extra
    install_requires=['torch>=2.4', 'mmengine>=0.10.0,<0.11'],
    extras_require={'det': DET, 'seg': SEG, 'cls': CLS, 'all': sorted(set(DET + SEG + CLS)),
                    'gpu': ['triton>=3.0'], 'deploy': ['onnx', 'onnxruntime'], 'tests': ['pytest']},
    license='Apache-2.0',
)
