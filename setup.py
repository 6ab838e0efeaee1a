"""elp: ELP-adapter tuning of frozen self-supervised speech backbones."""
from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in (Path(__file__).parent / "tools" / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="elp",
    version="0.1.0",
    description="ELP-adapter tuning (encoder, layer and prompt adapters) for speech SSL backbones",
    long_description=(Path(__file__).parent / "README.md").read_text()
    if (Path(__file__).parent / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["elp", "elp.*"]),
    install_requires=requirements,
    # peers: the HF PEFT row of `elp bench --peers` (SpeechBrain, the other peer, is core);
    # tensorboard: SpeechBrain's TensorboardLogger as the YAML's train_logger (docs/RECIPES.md)
    extras_require={"peers": ["peft==0.21.2"], "tensorboard": ["tensorboard==2.21.0"]},
    entry_points={"console_scripts": ["elp = elp.cli:main"]},
)
