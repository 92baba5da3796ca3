"""Installs mass_nn. Run `bash .ci/install` on a fresh machine: it orders the torch/sam2 steps (see there)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = (ROOT / "mass_nn" / "VERSION").read_text().strip()

setup(
    name="mass_nn",
    version=VERSION,
    description="Self-configuring toolkit for MASS: mask-guided self-supervised 3D medical image pretraining",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mass_nn", "mass_nn.*", "dataset_conversion", "dataset_conversion.*"]),
    package_data={"mass_nn": ["VERSION", "networks/native/*.cpp"]},
    data_files=[("share/mass_nn/plans", [str(p.relative_to(ROOT)) for p in sorted((ROOT / "plans").glob("*.json"))])],
    install_requires=[
        "torch>=2.5.1",
        "torchvision>=0.20.1",
        "sam2==1.1.0",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "dynamic-network-architectures>=0.4",
        "SimpleITK>=2.3",
        "nibabel>=5.0",
        "pydicom>=2.4",
        "pynrrd>=1.0",
        "scipy>=1.11",
        "scikit-image>=0.22",
        "blosc2>=3.0",
        "numpy>=1.24",
        "tqdm>=4.66",
        "matplotlib>=3.7",
        "psutil>=5.9",
    ],
    extras_require={"test": ["pytest>=7"], "nnunet": ["nnunetv2>=2.6"], "benchmark": ["nnunetv2>=2.6", "h5py>=3.8"]},
    entry_points={
        "console_scripts": [
            "mass_plan_and_preprocess=mass_nn.cli.plan_and_preprocess:main",
            "mass_generate_masks=mass_nn.cli.generate_masks:main",
            "mass_train=mass_nn.cli.train:main",
            "mass_predict=mass_nn.cli.predict:main",
            "mass_evaluate=mass_nn.cli.evaluate:main",
            "mass_fewshot=mass_nn.cli.fewshot:main",
            "mass_demo=mass_nn.cli.demo:main",
            "mass_export_nnunet=mass_nn.cli.export_nnunet:main",
            "mass_convert_dataset=dataset_conversion.cli:main",
        ]
    },
)
