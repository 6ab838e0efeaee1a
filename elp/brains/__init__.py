"""SpeechBrain ``Brain`` classes, one per task family.

* :class:`elp.brains.asr.ASRBrain`: CTC speech recognition.
* :class:`elp.brains.sv.SpeakerBrain`: speaker embeddings trained with AAM-softmax.
* :class:`elp.brains.classify.UtteranceClassifierBrain`: emotion and intent classification.
"""

from elp.brains.asr import ASRBrain
from elp.brains.base import ELPBrain
from elp.brains.classify import UtteranceClassifierBrain
from elp.brains.sv import SpeakerBrain

__all__ = ["ELPBrain", "ASRBrain", "SpeakerBrain", "UtteranceClassifierBrain"]
