"""SpeechBrain ``Brain`` classes, one per task family.

* :class:`elp.train.brains.asr.ASRBrain`: CTC speech recognition.
* :class:`elp.train.brains.sv.SpeakerBrain`: speaker embeddings trained with AAM-softmax.
* :class:`elp.train.brains.classify.UtteranceClassifierBrain`: emotion and intent classification.
* :class:`elp.train.brains.multitask.JointBrain`: several tasks trained together on one backbone.
"""

from elp.train.brains.asr import ASRBrain
from elp.train.brains.base import ELPBrain
from elp.train.brains.classify import UtteranceClassifierBrain
from elp.train.brains.multitask import JointBrain
from elp.train.brains.sv import SpeakerBrain

__all__ = ["ELPBrain", "ASRBrain", "SpeakerBrain", "UtteranceClassifierBrain", "JointBrain"]
