"""Cross-modal retrieval methods; importing this package registers every built-in method (one line each)."""

from tf_xmr.methods import acmr  # noqa: F401
from tf_xmr.methods import da_gan  # noqa: F401
from tf_xmr.methods import jfse  # noqa: F401
from tf_xmr.methods import sdml  # noqa: F401
from tf_xmr.methods import x_gacmn  # noqa: F401
from tf_xmr.methods.registry import MethodSpec, get_method, register_method, registered_methods

__all__ = ["MethodSpec", "get_method", "register_method", "registered_methods"]
