"""Cross-modal retrieval methods; importing this package registers every built-in method (one line each)."""

from tf_xmr.methods import acmr, da_gan, jfse, sdml, x_gacmn  # noqa: F401 - imported to register each method
from tf_xmr.methods.registry import MethodSpec, get_method, register_method, registered_methods

__all__ = ["MethodSpec", "get_method", "register_method", "registered_methods"]
