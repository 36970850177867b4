from setuptools import find_packages, setup


def version():
    with open('mmoverlock/__init__.py') as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip("'")


setup(
    name='mmoverlock',
    version=version(),
    description='OverLoCK (CVPR 2025) backbone for OpenMMLab 2.x: mmdet 3, mmseg 1, mmpretrain 1',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmoverlock', 'mmoverlock.*']),
    python_requires='>=3.8',
    # The ranges that work together: mmdet 3.3 / mmseg 1.2 refuse mmcv >= 2.2; mmengine 0.10.x.
    install_requires=[
        'torch>=2.0',
        'mmengine>=0.10.0,<0.11',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.0.0,<3.4',
        'mmsegmentation>=1.0.0,<1.3',
        'mmpretrain>=1.0.0,<1.3',
    ],
    extras_require={'tests': ['pytest'], 'deploy': ['onnx', 'onnxruntime']},
    license='Apache-2.0',
)
