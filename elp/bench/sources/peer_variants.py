"""Benchmark rows of peer toolkits' own code, on one WavLM checkpoint saved in HF format.

* ``sb_full``: SpeechBrain's HF wrapper ``speechbrain.integrations.huggingface.wavlm.WavLM``,
  full fine-tuning with the CNN frozen (``freeze_feature_extractor=True``);
* ``sb_weighted_sum``: SpeechBrain's ``WeightedSSLModel`` with ``freeze=True`` (learnable layer
  weights over the frozen backbone's hidden states);
* ``peft_lora``: HF PEFT ``LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])``
  on ``transformers.WavLMModel`` (optional extra ``pip install -e .[peers]``).

SpeechBrain's and PEFT's code runs as installed, unpatched; the harness puts the modules in
``train()`` mode, as SpeechBrain's ``Brain.fit`` does at every epoch. Every model loads the
checkpoint ``settings.source`` (:func:`save_random_checkpoint` writes a random one; nothing is
downloaded).

HF's WavLM attention reads ``q_proj.weight`` / ``v_proj.weight`` directly inside
``F.multi_head_attention_forward``, so PEFT's wrapped modules may never be called; the
harness's count of LoRA tensors with a gradient shows whether they are.

Examples
--------
>>> [c.key for c in candidates(log=lambda line: None) if c.key != "peft_lora"]
['sb_full', 'sb_weighted_sum']
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elp.bench.harness import BenchSettings, BuiltModel, Candidate
from elp.runtime import SAMPLE_RATE

#: Peer rows, in run order (``sb_full`` is the reference of every ratio), and their labels.
PEERS = {
    "sb_full": "SpeechBrain WavLM, full FT, CNN frozen",
    "sb_weighted_sum": "SpeechBrain WeightedSSLModel, frozen",
    "peft_lora": "HF PEFT LoRA r8 q,v",
}

#: elp variants run next to the peers when none are named.
DEFAULT_ELP_METHODS = ["full", "weighted_sum", "lora", "el", "elp"]

#: The PEFT release the ``peers`` extra pins (setup.py).
PEFT_VERSION = "0.21.2"

#: What to do when PEFT is missing (logged once per run, the row is skipped).
PEFT_MISSING = (f"HF PEFT is not installed: skipping the '{PEERS['peft_lora']}' row; install it with "
                f"`pip install -e .[peers]` (or `pip install peft=={PEFT_VERSION}`)")

#: Hyper-parameters of the PEFT LoRA peer (the same as elp's lora method).
LORA_RANK, LORA_ALPHA, LORA_TARGETS = 8, 16.0, ("q_proj", "v_proj")


def import_peft():
    """``peft``, or None when it is not installed."""
    try:
        import peft
    except ImportError:
        return None
    return peft


def candidates(log=print) -> list[Candidate]:
    """The peer rows whose toolkits are installed (a missing PEFT is logged, its row skipped).

    Parameters
    ----------
    log : Callable[[str], object], optional
        Where the missing-PEFT line goes.

    Returns
    -------
    list[Candidate]
        In :data:`PEERS` order.
    """
    keys = list(PEERS)
    if import_peft() is None:
        log(PEFT_MISSING)
        keys.remove("peft_lora")
    return [Candidate(key, PEERS[key], __name__) for key in keys]


def save_random_checkpoint(directory: str | os.PathLike, backbone: str = "wavlm_plus",
                           config_overrides: dict | None = None, seed: int = 0) -> Path:
    """Save a random-weight WavLM checkpoint in HF format (config, weights, feature extractor).

    Parameters
    ----------
    directory
        Where to write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``
        (SpeechBrain's wrapper reads the latter).
    backbone
        Short name of a WavLM backbone (:data:`elp.core.backbones.BACKBONES`).

    Raises
    ------
    ValueError
        For a backbone of another family.

    Examples
    --------
    >>> import tempfile
    >>> from elp.core.presets import TINY_CONFIG
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_random_checkpoint(tmp, config_overrides=TINY_CONFIG)
    ...     sorted(p.name for p in path.iterdir())
    ['config.json', 'model.safetensors', 'preprocessor_config.json']
    """
    import transformers

    from elp.core.backbones import BACKBONES, backbone_config

    if backbone not in BACKBONES or BACKBONES[backbone].family != "wavlm":
        wavlm = [name for name, spec in BACKBONES.items() if spec.family == "wavlm"]
        raise ValueError(f"peer benchmark backbone {backbone!r}: the SpeechBrain peers wrap WavLM; "
                         f"choose one of {', '.join(wavlm)}")
    # backbone_config switches layerdrop and SpecAugment masking off: every row reads this
    # config.json, so no model skips layers or masks frames the others compute
    config = backbone_config(backbone, **(config_overrides or {}))
    torch.manual_seed(seed)
    model = transformers.WavLMModel(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
        do_normalize=bool(config.do_stable_layer_norm), return_attention_mask=True,
    ).save_pretrained(directory)
    return directory


def check_checkpoint(source: str | os.PathLike) -> Path:
    """``source`` if SpeechBrain's WavLM wrapper can load it.

    Raises
    ------
    FileNotFoundError
        Without ``preprocessor_config.json``, naming how to write one.
    """
    source = Path(source)
    if not (source / "preprocessor_config.json").exists():
        raise FileNotFoundError(f"{source}: no preprocessor_config.json (SpeechBrain's WavLM wrapper "
                                "reads it); save one with transformers.Wav2Vec2FeatureExtractor(...)"
                                ".save_pretrained(dir) or let the benchmark save a random checkpoint")
    return source


def build(key: str, settings: BenchSettings, work_dir: Path) -> BuiltModel:
    """The model of the peer row ``key`` on the checkpoint ``settings.source`` (the harness's
    build hook).

    Parameters
    ----------
    key
        A key of :data:`PEERS`.
    settings
        ``source``: the checkpoint directory.
    work_dir
        SpeechBrain's ``save_path``.

    Returns
    -------
    BuiltModel
        The peer module; LoRA tensors for ``peft_lora``.

    Raises
    ------
    ValueError
        For an unknown key or no checkpoint.
    RuntimeError
        For ``peft_lora`` without PEFT.
    """
    if key not in PEERS:
        raise ValueError(f"unknown peer benchmark variant {key!r}; use one of {', '.join(PEERS)}")
    if not settings.source:
        raise ValueError(f"peer benchmark variant {key!r} needs a checkpoint: set settings.source "
                         "(save_random_checkpoint writes one)")
    source = str(check_checkpoint(settings.source))
    if key == "peft_lora":
        return _build_peft(source)
    if key == "sb_full":
        from speechbrain.integrations.huggingface.wavlm import WavLM

        module = WavLM(source, save_path=str(work_dir / "speechbrain"), freeze=False, freeze_feature_extractor=True)
    else:
        from speechbrain.integrations.huggingface.weighted_ssl import WeightedSSLModel

        module = WeightedSSLModel(source, save_path=str(work_dir / "speechbrain"), freeze=True)
    return BuiltModel([module], lambda wavs, wav_lens: (module(wavs, wav_lens), None),
                      [p for p in module.parameters() if p.requires_grad], module.model.config.hidden_size)


def _build_peft(source: str) -> BuiltModel:
    peft = import_peft()
    if peft is None:
        raise RuntimeError(PEFT_MISSING)
    import transformers

    base = transformers.WavLMModel.from_pretrained(source)
    config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(LORA_TARGETS),
                             lora_dropout=0.0, bias="none")
    module = peft.get_peft_model(base, config)
    lora = {name: p for name, p in module.named_parameters() if "lora_" in name}
    return BuiltModel([module], lambda wavs, wav_lens: (module(input_values=wavs).last_hidden_state, None),
                      [p for p in module.parameters() if p.requires_grad], base.config.hidden_size, lora)
