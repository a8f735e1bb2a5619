"""SMART (Jiang et al., 2020): the adversarial regularizer, the Bregman proximal step, helpers.

:class:`SmartLoss` and :class:`BregmanProximal` are modules over the functional form
:mod:`mtlkit.smart.functional`; :func:`hf_smart_inputs` builds SMART's inputs from a Hugging Face
encoder.
"""

from mtlkit.smart import functional
from mtlkit.smart._bregman import BregmanProximal
from mtlkit.smart._hf import hf_smart_inputs
from mtlkit.smart._loss import SmartLoss

__all__ = ["BregmanProximal", "SmartLoss", "functional", "hf_smart_inputs"]
